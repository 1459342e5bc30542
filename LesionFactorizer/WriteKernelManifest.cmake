# Writes the window-NMF kernel's manifest beside the built library: the record LesionFactorizerLib/nn/native.py
# checks (size, SHA-256, the source's SHA-256) before it loads the library. Same keys as native.manifest().
# Run after the build: cmake -DLIBRARY=... -DSOURCE=... -DCOMPILER=... -P WriteKernelManifest.cmake
foreach(_var LIBRARY SOURCE COMPILER)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "WriteKernelManifest.cmake needs -D${_var}=...")
  endif()
endforeach()
get_filename_component(_name "${LIBRARY}" NAME)
get_filename_component(_dir "${LIBRARY}" DIRECTORY)
file(SIZE "${LIBRARY}" _bytes)
file(SHA256 "${LIBRARY}" _sha256)
file(SHA256 "${SOURCE}" _source_sha256)
file(WRITE "${_dir}/window_nmf.json"
  "{\"library\": \"${_name}\", \"bytes\": ${_bytes}, \"sha256\": \"${_sha256}\", "
  "\"source_sha256\": \"${_source_sha256}\", \"compiler\": \"${COMPILER}\"}\n")
