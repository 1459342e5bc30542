"""Configure the extension's CMake with real CMake and check the packaged layout.

Slicer's SDK cannot be installed here, so a minimal stand-in for the four things our CMake uses
from it (Slicer_USE_FILE, slicerMacroBuildScriptedModule, slicer_add_python_unittest and the
extension config/CPack includes) is generated below. The stand-in enforces what the real macros
enforce (mandatory NAME, no unknown keywords, every listed file exists) and copies files the way
they do. What is checked is ours: the CMake code runs, every listed file exists, and the build
tree has the layout the module relies on at run time (library and bundled data next to the module,
found by the module's own path logic, importable without torch).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

USE_SLICER = textwrap.dedent(r"""
    set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.9/qt-scripted-modules)
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


@pytest.fixture(scope="module")
def build_tree(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    root = tmp_path_factory.mktemp("cmake")
    sdk = root / "Slicer-SDK"
    sdk.mkdir()
    (sdk / "UseSlicer.cmake").write_text(USE_SLICER, encoding="utf-8")
    (sdk / "empty.cmake").write_text("", encoding="utf-8")
    (sdk / "SlicerConfig.cmake").write_text(textwrap.dedent("""
        set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
        set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
        set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
    """), encoding="utf-8")
    build = root / "build"
    proc = subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={sdk}", "-DBUILD_TESTING=ON"],
                          capture_output=True, text=True, timeout=240, encoding="utf-8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build


def test_configure_registers_the_module_and_its_self_test(build_tree):
    assert (build_tree / "scripted-modules.txt").read_text(encoding="utf-8").split() == ["LesionFactorizer", "TRUE"]
    assert (build_tree / "python-tests.txt").read_text(encoding="utf-8").split() == ["LesionFactorizer.py"]


def test_build_tree_has_the_runtime_layout(build_tree):
    modules = build_tree / "lib" / "Slicer-5.9" / "qt-scripted-modules"
    for rel in ("LesionFactorizer.py", "LesionFactorizerModuleLib/worker.py", "Resources/UI/LesionFactorizer.ui",
                "Resources/Icons/LesionFactorizer.png", "LesionFactorizerLib/__init__.py",
                "LesionFactorizerLib/tasks.py", "LesionFactorizerLib/modelfile.py", "LesionFactorizerLib/cli/segment.py"):
        assert (modules / rel).is_file(), rel
    sources = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "LesionFactorizerLib").rglob("*.py")
                     if "__pycache__" not in p.parts)
    copied = sorted(p.relative_to(modules).as_posix() for p in (modules / "LesionFactorizerLib").rglob("*.py"))
    assert copied == sources  # the worker gets the whole library
    for data in (REPO / "Resources" / "Models").glob("*.safetensors"):
        assert (modules / "Resources" / "Models" / data.name).is_file()

    # In the installed layout the module's own path logic finds the library, the library finds the
    # bundled models folder, and nothing imports torch.
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(modules)!r}]
        from LesionFactorizerModuleLib.libpath import find_library_root, bundled_resources
        root = find_library_root({str(modules)!r})
        assert str(root) == {str(modules)!r}, root
        import LesionFactorizerLib.modelfile as mf, LesionFactorizerLib.tasks
        assert mf.__file__.startswith({str(modules)!r}), mf.__file__
        assert bundled_resources(root) / "Models" in [d for d in mf.bundled_model_dirs()]
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "monai")]
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=build_tree, encoding="utf-8")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
