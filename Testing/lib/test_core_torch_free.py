"""The torch-free core (``LesionFactorizerLib/core/``): the folder states the rule, this test holds it.

Every module in the folder imports on the standard library alone — no torch, numpy, SimpleITK or
MONAI, not even the site-packages they live in (``python -I -S``) — and on Python 3.9 (Slicer 5.8)
where one is installed, so the Slicer GUI may import any of them. That nothing in the folder imports
the rest of the library is the import-graph test's (``test_import_graph.py``: the lowest layer).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
from helpers import REPO

CORE = REPO / "LesionFactorizerLib" / "core"


def core_modules() -> list[str]:
    return sorted(f"LesionFactorizerLib.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")


def _import_alone(python: str) -> subprocess.CompletedProcess:
    code = ("import sys; sys.path.insert(0, {repo!r})\n"
            "import importlib\n"
            "for name in {names!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'SimpleITK', 'monai')))"
            ).format(repo=str(REPO), names=core_modules())
    return subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120,
                          encoding="utf-8")


def test_the_core_folder_holds_the_facts_the_gui_reads():
    names = core_modules()
    for name in ("tasks", "spec", "outputspec", "settings", "speed_presets", "layout", "checksums", "usercache"):
        assert f"LesionFactorizerLib.core.{name}" in names


def test_every_core_module_imports_on_the_standard_library_alone():
    proc = _import_alone(sys.executable)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_every_core_module_imports_on_python_39():
    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    if not pythons:
        pytest.skip("no Python 3.9 here (Slicer 5.8's)")
    proc = _import_alone(pythons[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_module_that_needs_more_is_caught(tmp_path):
    """Guard against a vacuous pass: under -I -S a third-party import fails."""
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-I", "-S", str(probe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "numpy" in proc.stderr
