"""The Slicer stand-in cannot drift from Slicer: every name it provides exists in the real API.

Checked against the API indexes of Slicer 5.8.1 and 5.10.0, made from Slicer's sources (where they
are: ``slicer_standin/api_index.py``). Slicer's own names (``slicer.*``,
``slicer.util.*``, ``SampleData.*``, MRML/qMRML/CTK classes and their members) must be declared
there. Qt and VTK are not Slicer: their members count as known when Slicer's own sources call them
(the index's usage evidence, as the checker itself treats them). A few Qt/VTK names the module uses
appear in no Slicer source in a form the index records; they are listed here, each used by the
module, and nothing else may be missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache

import pytest
from helpers import REPO, STANDIN

from slicer_standin import api_index
VERSIONS = ("5.8.1", "5.10.0")
LIST_NAMES = STANDIN / "list_names.py"
MODULE_FILE = REPO / "LesionFactorizer" / "LesionFactorizer.py"

# Qt/VTK names the index cannot show (enums, VTK wrapping helpers, signals); the module uses each.
QT_VTK_NAMES = {
    ("qt", "Qt", "UserRole"), ("qt", "Qt", "Checked"), ("qt", "Qt", "Unchecked"),
    ("qt", "Qt", "ItemIsUserCheckable"), ("vtk", "mutable", ""), ("vtk", "VTK_OBJECT", ""),
}
QT_SIGNALS = {"clicked", "currentIndexChanged", "timeout", "cellClicked", "toggled", "itemChanged", "valueChanged"}  # of any widget class
PY_MODULES = {"slicer.util", "slicer.i18n", "slicer.ScriptedLoadableModule", "SampleData", "DICOMLib.DICOMUtils"}


def _index(version):
    path = api_index.need(api_index.index(version), api_index.INDEX_VAR)
    return json.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _standin_names():
    proc = subprocess.run([sys.executable, "-I", str(LIST_NAMES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [tuple(row) for row in json.loads(proc.stdout)]


def _cxx_members(index, cls):
    found, todo = set(), [cls]
    while todo:
        entry = index["cxx"].get(todo.pop())
        if entry:
            for names in entry.get("m", {}).values():
                found.update(names)
            todo += entry.get("b", [])
    return found


def _py_names(index, module):
    return index["py"]["modules"].get(module, {}).get("n", {})


def _py_members(index, module, cls):
    entry = _py_names(index, module).get(cls)
    return set(entry[1].get("m", {})) if isinstance(entry, list) and len(entry) > 1 else set()


def _known(index, module, name, member):
    usage = set(index["usage_methods"])
    if module in ("qt", "ctk", "slicer") and member in QT_SIGNALS:
        return True
    slicer_class = name in index["cxx"] or name in index["exported_classes"]
    if module == "slicer":
        if name in ("app", "modules") and member:
            return f"slicer.{name}.{member}" in index["usage_chains"] or member in usage \
                or member.lower() in index["loadable_modules"]
        if not member:
            return name in index["py"]["runtime_attrs"] or slicer_class or f"slicer.{name}" in index["py"]["modules"]
        return member in _cxx_members(index, name) or member in usage
    if module in PY_MODULES:
        if not member:
            return name in _py_names(index, module)
        return member in _py_members(index, module, name)
    if (module, name, member) in QT_VTK_NAMES:
        return True
    if module == "ctk" and slicer_class:
        return (not member) or member in _cxx_members(index, name) or member in usage
    # Qt / VTK: known when Slicer's sources use it
    return (member or name) in usage or (not member and (name in index["cxx"] or name.startswith("Q")))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.slow
def test_every_standin_name_exists_in_slicer(version):
    index = _index(version)
    names = _standin_names()
    assert len(names) > 200  # it really listed the stand-in
    unknown = [".".join(filter(None, row)) for row in names if not _known(index, *row)]
    assert not unknown, f"not in the Slicer {version} API: {unknown}"


def test_the_allowed_qt_vtk_names_are_used_by_the_module():
    """The exceptions above are needed by the module, not a way to hide stand-in inventions."""
    source = "".join(p.read_text(encoding="utf-8") for p in MODULE_FILE.parent.rglob("*.py"))
    for module, name, member in QT_VTK_NAMES:
        assert (member or name) in source, (module, name, member)
    for signal in QT_SIGNALS:
        assert f".{signal}.connect(" in source, signal


def test_the_check_catches_an_invented_name():
    index = _index(VERSIONS[-1])
    assert _known(index, "slicer", "vtkSegmentation", "GetSegmentIdBySegmentName")
    assert not _known(index, "slicer", "vtkSegmentation", "GetSegmentIDBySegmentName")
    assert not _known(index, "slicer.util", "arrayFromVolumeFast", "")
    assert not _known(index, "SampleData", "SampleDataLogic", "registerSampleSource")
