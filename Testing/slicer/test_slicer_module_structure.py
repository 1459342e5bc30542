"""The Slicer module as files: API conformance, the .ui, CMake lists, icons, and no torch import.

Slicer cannot be installed here, so these checks stand in for "it loads in Slicer": every Slicer
name we call exists in the real Slicer sources (the Slicer API checker, ``slicer_standin/api_index.py``), every widget the module
looks up exists in the .ui with a class Slicer has, and every file CMake must package exists.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from helpers import MODULE_DIR, REPO

from slicer_standin import api_index
MODULE_FILE = MODULE_DIR / "LesionFactorizer.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LesionFactorizer.ui"


def _checker_and_index():
    return (api_index.need(api_index.checker(), api_index.CHECKER_VAR),
            api_index.need(api_index.index(), api_index.INDEX_VAR))


@pytest.mark.slow
def test_slicer_api_conformance():
    checker, index = _checker_and_index()
    proc = subprocess.run([sys.executable, str(checker), "--index", str(index), "LesionFactorizer"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, encoding="utf-8")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert " 0 error(s)" in output, output
    assert "0 distinct unverified name(s)" in output, output
    # it really looked at the module and the .ui
    checked = int(re.search(r"checked (\d+) file\(s\)", output).group(1))
    assert checked >= 3


@pytest.mark.slow
def test_api_checker_catches_a_wrong_name(tmp_path):
    """Guard against a vacuous pass: a misspelt Slicer call in a copy of our module is an error."""
    checker, index = _checker_and_index()
    broken = MODULE_FILE.read_text(encoding="utf-8").replace("GetSegmentIdBySegmentName", "GetSegmentIDBySegmentName", 1)
    assert broken != MODULE_FILE.read_text(encoding="utf-8")
    (tmp_path / "LesionFactorizer.py").write_text(broken, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(checker), "--index", str(index), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert proc.returncode == 1
    assert "GetSegmentIDBySegmentName" in proc.stdout + proc.stderr


def _ui_widgets() -> dict[str, str]:
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_ui_is_designer_xml_with_slicer_widget_classes():
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "LesionFactorizer"
    widgets = _ui_widgets()
    classes = set(widgets.values())
    assert all(re.match(r"^(qMRML|qSlicer|ctk|Q)[A-Za-z0-9]+$", c) for c in classes), classes
    custom = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    for cls in classes:
        if not cls.startswith("Q"):
            assert cls in custom, f"{cls} used but not declared in <customwidgets>"
    if api_index.index():
        cxx = json.loads(api_index.index().read_text(encoding="utf-8"))["cxx"]
        for cls in set(custom) | {c for c in classes if not c.startswith("Q")}:
            assert cls in cxx, f"{cls} does not exist in Slicer/CTK"
    # every MRML selector receives the scene from the top-level widget
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    selectors = {n for n, c in widgets.items() if c in ("qMRMLNodeComboBox", "qMRMLColorTableComboBox")}
    assert selectors and selectors <= receivers


def _looked_up_widgets() -> set[str]:
    """Names the module reads from self.ui: attributes, and getattr(self.ui, f"name{i}") in range(MAX_INPUTS)."""
    source = MODULE_FILE.read_text(encoding="utf-8")
    tree = ast.parse(source)
    names = set()
    max_inputs = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MAX_INPUTS" for t in node.targets):
            max_inputs = ast.literal_eval(node.value)
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    assert max_inputs, "MAX_INPUTS not found"
    for prefix in re.findall(r'getattr\(self\.ui, f"(\w+)\{i\}"\)', source):
        names |= {f"{prefix}{i}" for i in range(max_inputs)}
    return names


def test_every_widget_the_module_uses_exists_in_the_ui():
    widgets = _ui_widgets()
    used = _looked_up_widgets()
    assert len(used) > 25  # the parser found the real look-ups
    missing = sorted(used - set(widgets))
    assert not missing, f"widgets used by the module but absent from the .ui: {missing}"
    assert {f"inputSelector{i}" for i in range(4)} <= used


def test_ui_has_enough_input_selectors_for_every_task():
    from LesionFactorizerLib.core.tasks import TASKS

    widgets = _ui_widgets()
    most = max(len(t.inputs) for t in TASKS.values())
    for i in range(most):
        assert widgets.get(f"inputSelector{i}") == "qMRMLNodeComboBox"
        assert widgets.get(f"inputStatusLabel{i}") == "QLabel"


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, variable
    return match.group(1).split()


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = [s.replace("${MODULE_NAME}", "LesionFactorizer") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", "LesionFactorizer") for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    for rel in scripts + resources:
        assert (MODULE_DIR / rel).is_file(), f"CMake lists missing file {rel}"
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk == set(scripts), f"not listed in CMake: {on_disk - set(scripts)}"
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # the library the worker runs and the bundled data are packaged too
    assert "LesionFactorizerLib/*.py" in text and "Resources/Models/*.safetensors" in text
    assert "Resources/SampleData" in text


def test_extension_cmake_metadata_is_complete():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert text.index("project(LesionFactorizer)") < text.index("find_package(Slicer REQUIRED)")
    assert text.index("find_package(Slicer REQUIRED)") < text.index("add_subdirectory(LesionFactorizer)")
    assert text.rstrip().endswith("include(${Slicer_EXTENSION_CPACK})")


@pytest.mark.parametrize("path", [REPO / "Resources" / "Icons" / "LesionFactorizer.png",
                                  MODULE_DIR / "Resources" / "Icons" / "LesionFactorizer.png"])
def test_icons_are_real_128px_pngs(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)
    assert len(data) > 2000  # not a blank placeholder


def test_module_side_code_never_imports_torch_or_monai():
    forbidden = {"torch", "monai", "lightning", "safetensors"}
    for path in MODULE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & forbidden, f"{path.name} imports {roots & forbidden}"


@pytest.mark.slow
def test_helper_package_imports_without_loading_torch():
    code = ("import sys; sys.path[:0] = [{lib!r}, {mod!r}]\n"
            "import LesionFactorizerModuleLib.worker, LesionFactorizerModuleLib.progress, "
            "LesionFactorizerModuleLib.inputs, LesionFactorizerModuleLib.report, "
            "LesionFactorizerModuleLib.components, LesionFactorizerModuleLib.dependencies, "
            "LesionFactorizerModuleLib.models, LesionFactorizerModuleLib.samples, "
            "LesionFactorizerModuleLib.outputs, LesionFactorizerModuleLib.libpath, "
            "LesionFactorizerModuleLib.results\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'slicer', 'qt'))\n"
            "print(','.join(bad))").format(lib=str(REPO), mod=str(MODULE_DIR))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_library_is_found_from_the_module_folder(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    from LesionFactorizerModuleLib.libpath import find_library_root

    assert find_library_root(MODULE_DIR) == REPO
    # installed layout: library copied next to the module file
    (tmp_path / "LesionFactorizerLib").mkdir()
    (tmp_path / "LesionFactorizerLib" / "__init__.py").write_text("", encoding="utf-8")
    assert find_library_root(tmp_path) == tmp_path
    assert find_library_root(tmp_path / "LesionFactorizerLib" / "nowhere") is not None
    empty = tmp_path / "a" / "b" / "c" / "d"
    empty.mkdir(parents=True)
    assert find_library_root(empty) is None
