"""First use in a Slicer whose Python has only what Slicer bundles: the module installs the worker's
packages (one confirmation; torch alone through light-the-torch; pip with Slicer's own packages held
by a constraints file) and never imports torch into the GUI.

The GUI interpreter starts without site-packages (``-S``): it sees the stand-in, numpy, SimpleITK
and packaging (as Slicer bundles them) and an empty shared site-packages, where the stand-in's
recording ``pip_install`` / ``_executePythonModule`` install real distribution metadata (and a
``torch`` package that marks its import); the stand-in PyTorchUtils would install torchvision and
import torch if the module used it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from helpers import MODULE_DIR, STANDIN

pytestmark = pytest.mark.slow

BUNDLED = ("numpy", "numpy.libs", "SimpleITK", "packaging")  # what Slicer's Python has of ours
# the stand-in package index: a version in every tested range (light-the-torch installs torch)
INDEX = {"light-the-torch": "0.7.5", "torch": "2.5.1", "safetensors": "0.4.5", "einops": "0.8.0", "scipy": "1.14.1",
         "tqdm": "4.66.5", "pyyaml": "6.0.2", "slicerio": "1.4.0", "highdicom": "0.23.1"}


def _bundled_python(tmp_path, extra_dist=None) -> Path:
    """A folder with Slicer's bundled packages (links to this environment's), metadata included."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    folder = tmp_path / "slicer-python"
    folder.mkdir()
    for entry in purelib.iterdir():
        root = entry.name.split("-")[0].lower()
        if entry.name in BUNDLED or (entry.name.endswith(".dist-info") and root in {"numpy", "simpleitk", "packaging"}):
            (folder / entry.name).symlink_to(entry)
    for name, version in (extra_dist or {}).items():
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def run_first_use(tmp_path, body: str, index=INDEX, installed=None, bundled=None) -> dict:
    """The stand-in Slicer on a bare Python; ``installed``: distributions already in the shared
    site-packages (name -> version); ``body`` fills ``out``."""
    site = tmp_path / "site-packages"
    site.mkdir()
    for name, version in (installed or {}).items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    script = textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = [{str(STANDIN)!r}, {str(_bundled_python(tmp_path, bundled))!r}]
        import harness
        harness.start({str(MODULE_DIR)!r}, "5.10.0", {sys.executable!r}, {str(site)!r})
        import slicer, qt
        slicer.app._packageIndex.update({json.dumps(index)})
        module, _ = harness.load_module({str(MODULE_DIR)!r}, "LesionFactorizer")
        harness.startup_completed()
        widget = harness.create_widget(module, "LesionFactorizer")
        logic = widget.logic
        out = {{}}
    """) + textwrap.dedent(body) + textwrap.dedent(f"""
        out["installs"] = slicer.app._installs
        out["dialogs"] = slicer.app._dialogs
        out["torch imported"] = "torch" in sys.modules or __import__("os").path.exists({str(site / "torch" / "__init__.py.imported")!r})
        out["temp left"] = [str(p) for p in harness.temporary_path().rglob("constraints.txt")]
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _requirements(call):
    args = call["args"]
    skip = {i + 1 for i, a in enumerate(args) if a in ("-c", "--upgrade-strategy")}
    return [a for i, a in enumerate(args[1:], 1) if i not in skip and not a.startswith("-")]


def test_missing_packages_are_installed_after_one_confirmation_without_torch_in_the_gui(tmp_path):
    out = run_first_use(tmp_path, """
        import numpy, SimpleITK
        slicer.modules.pytorchutils = object()   # the PyTorch extension is installed (the stand-in PyTorchUtils)
        out["ready"] = logic.setupPythonRequirements(askConfirmation=True, outputFormat="seg.nrrd")
        out["versions"] = [numpy.__version__, SimpleITK.Version_VersionString()]
    """)
    assert out["ready"] is True
    confirmations = [text for kind, text in out["dialogs"] if kind == "confirm"]
    assert len(confirmations) == 1 and "torch>=2.1,<3" in confirmations[0] and "slicerio" in confirmations[0]
    assert not [d for d in out["dialogs"] if d[0] == "error"]
    calls = [(c["module"], _requirements(c)) for c in out["installs"]]
    assert calls[0] == ("pip", ["light-the-torch>=0.5"])
    assert calls[1] == ("light_the_torch", ["torch>=2.1,<3"])    # torch alone: no torchvision
    assert calls[2][0] == "pip" and set(calls[2][1]) == {"safetensors>=0.4,<1", "einops>=0.6,<1", "scipy>=1.10,<2",
                                                          "tqdm>=4.60,<5", "pyyaml>=6.0,<7", "slicerio>=1.4,<2"}
    assert not any("torchvision" in a for c in out["installs"] for a in c["args"])
    numpy_version, sitk_version = out["versions"]
    for call in out["installs"]:   # every install holds Slicer's own packages where they are
        assert call["constraints"] and f"numpy=={numpy_version}" in call["constraints"][0].split()
        assert f"SimpleITK=={sitk_version}" in call["constraints"][0].split()
    assert "--upgrade-strategy" in out["installs"][2]["args"]
    assert out["torch imported"] is False
    assert out["temp left"] == []


def test_an_out_of_range_package_is_reinstalled_and_a_satisfied_one_left_alone(tmp_path):
    installed = {"torch": "2.5.1", "light-the-torch": "0.7.5", "safetensors": "0.4.5", "einops": "0.8.0",
                 "scipy": "1.9.0", "tqdm": "4.66.5", "pyyaml": "6.0.2"}
    out = run_first_use(tmp_path, """
        out["ready"] = logic.setupPythonRequirements(askConfirmation=True)
        out["again"] = logic.setupPythonRequirements(askConfirmation=True)   # nothing left to do
    """, installed=installed)
    assert out["ready"] is True and out["again"] is True
    assert [(c["module"], _requirements(c)) for c in out["installs"]] == [("pip", ["scipy>=1.10,<2"])]
    assert len([d for d in out["dialogs"] if d[0] == "confirm"]) == 1
    assert out["torch imported"] is False


def test_declined_install_changes_nothing(tmp_path):
    out = run_first_use(tmp_path, """
        harness.answer_next_confirmations(False)
        out["ready"] = logic.setupPythonRequirements(askConfirmation=True)
    """)
    assert out["ready"] is False and out["installs"] == []
    assert out["temp left"] == []


def test_failed_install_is_reported_and_not_called_ready(tmp_path):
    index = {k: v for k, v in INDEX.items() if k != "einops"}   # the index lacks one package
    out = run_first_use(tmp_path, """
        out["ready"] = logic.setupPythonRequirements(askConfirmation=False)
    """, index=index)
    assert out["ready"] is False
    errors = [text for kind, text in out["dialogs"] if kind == "error"]
    assert errors and "Installing Python packages failed" in errors[0]
    assert out["temp left"] == [] and out["torch imported"] is False


def test_dicom_seg_holds_slicers_pydicom(tmp_path):
    """With a pydicom 3 in Slicer's Python, highdicom is installed under a constraint that keeps it."""
    out = run_first_use(tmp_path, """
        out["ready"] = logic.setupPythonRequirements(askConfirmation=False, dicomSeg=True)
    """, bundled={"pydicom": "3.0.1"})
    assert out["ready"] is True
    pip = out["installs"][-1]
    assert "highdicom>=0.23,<1" in _requirements(pip)
    assert "pydicom==3.0.1" in pip["constraints"][0].split()


def test_slicer_5_10s_pydicom_refuses_dicom_seg_before_any_install(tmp_path):
    """Slicer 5.10 bundles pydicom 2.4.4 (with numpy 2): no highdicom works there, and Slicer's
    pydicom is never replaced, so DICOM SEG is refused with the reason and nothing is installed."""
    out = run_first_use(tmp_path, """
        out["ready"] = logic.setupPythonRequirements(askConfirmation=False, dicomSeg=True)
    """, bundled={"pydicom": "2.4.4"}, installed={n: v for n, v in INDEX.items()})
    assert out["ready"] is False and out["installs"] == []
    assert any("bundled with Slicer" in text for kind, text in out["dialogs"] if kind == "error")
