"""A stand-in Slicer SDK for configuring, building and installing the extension with real CMake.

It provides the four things the extension's CMake uses from Slicer (Slicer_USE_FILE,
slicerMacroBuildScriptedModule, slicer_add_python_unittest, the extension config/CPack includes)
and the version variables. The macros enforce what the real ones enforce (mandatory NAME, no
unknown keywords, every listed file exists) and copy/install files the way they do: next to the
module, keeping their relative paths, under lib/Slicer-X.Y/qt-scripted-modules.
"""

import shutil
import subprocess
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

USE_SLICER = textwrap.dedent(r"""
    set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}/qt-scripted-modules)
    set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
    function(slicerMacroBuildScriptedModule)
      cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
      if(MY_UNPARSED_ARGUMENTS)
        message(FATAL_ERROR "unknown arguments: ${MY_UNPARSED_ARGUMENTS}")
      endif()
      if(NOT MY_NAME)
        message(FATAL_ERROR "NAME is mandatory")
      endif()
      foreach(f IN LISTS MY_SCRIPTS MY_RESOURCES)
        if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
          message(FATAL_ERROR "listed file does not exist: ${f}")
        endif()
        configure_file(${CMAKE_CURRENT_SOURCE_DIR}/${f}
          ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${f} COPYONLY)
        get_filename_component(_dir ${f} DIRECTORY)
        install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/${f}
          DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${_dir} COMPONENT RuntimeLibraries)
      endforeach()
      file(APPEND ${CMAKE_BINARY_DIR}/scripted-modules.txt "${MY_NAME} ${MY_WITH_GENERIC_TESTS}\n")
    endfunction()
    function(slicer_add_python_unittest)
      cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
      if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT})
        message(FATAL_ERROR "test script does not exist: ${MY_SCRIPT}")
      endif()
      file(APPEND ${CMAKE_BINARY_DIR}/python-tests.txt "${MY_SCRIPT}\n")
    endfunction()
""")


def write_sdk(directory, version="5.10"):
    major, minor = version.split(".")[:2]
    sdk = Path(directory)
    sdk.mkdir(parents=True, exist_ok=True)
    (sdk / "UseSlicer.cmake").write_text(USE_SLICER, encoding="utf-8")
    (sdk / "empty.cmake").write_text("", encoding="utf-8")
    (sdk / "SlicerConfig.cmake").write_text(textwrap.dedent(f"""
        set(Slicer_VERSION_MAJOR {major})
        set(Slicer_VERSION_MINOR {minor})
        set(Slicer_USE_FILE ${{CMAKE_CURRENT_LIST_DIR}}/UseSlicer.cmake)
        set(Slicer_EXTENSION_GENERATE_CONFIG ${{CMAKE_CURRENT_LIST_DIR}}/empty.cmake)
        set(Slicer_EXTENSION_CPACK ${{CMAKE_CURRENT_LIST_DIR}}/empty.cmake)
    """), encoding="utf-8")
    return sdk


def configure(workdir, version="5.10"):
    """Configure the extension against the stand-in SDK; the completed process and the build folder."""
    if shutil.which("cmake") is None:
        return None, None
    workdir = Path(workdir)
    sdk = write_sdk(workdir / "Slicer-SDK", version)
    build = workdir / "build"
    proc = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={sdk}", "-DBUILD_TESTING=ON"],
                          capture_output=True, text=True, timeout=240, encoding="utf-8")
    return proc, build


def install(build, prefix):
    """``cmake --build`` (the kernel library) and ``cmake --install``: the tree the Extensions Manager
    unpacks; its scripted-modules folder."""
    for command in (["cmake", "--build", str(build)], ["cmake", "--install", str(build), "--prefix", str(prefix)]):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=240, encoding="utf-8")
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    found = sorted(Path(prefix).glob("lib/Slicer-*/qt-scripted-modules"))
    if len(found) != 1:
        raise RuntimeError(f"expected one scripted-modules folder under {prefix}, found {found}")
    return found[0]
