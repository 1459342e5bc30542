"""First-use installation of the worker's packages from Slicer's GUI, which never loads them itself.

What is missing and how it is installed is decided in ``dependencies`` (Slicer-free); this file runs
it in Slicer: one confirmation, torch through light-the-torch (the installer the PyTorch extension
uses, which picks the CUDA build the driver supports) but for torch alone and in a child process,
the rest through ``slicer.util.pip_install``; every install runs with a constraints file holding
Slicer's own numpy, SimpleITK and pydicom where they are. PyTorchUtils' ``installTorch`` is not used:
it also installs torchvision, which nothing here needs, and ends with ``import torch`` in the GUI.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import slicer
from slicer.i18n import tr as _

from LesionFactorizerModuleLib import dependencies as dependenciesLib

LIGHT_THE_TORCH = "light-the-torch>=0.5"


def setup_python_requirements(askConfirmation=True, outputFormat="", dicomSeg=False) -> bool:
    """Install missing worker packages (one confirmation listing them). True when ready to run.

    outputFormat, dicomSeg: the run's outputs; some need packages of their own (seg.nrrd, DICOM SEG)."""
    problem = dependenciesLib.unsupported_python()
    if problem:
        slicer.util.errorDisplay(problem)
        return False
    needed = dependenciesLib.required(outputFormat, dicomSeg)
    plan = dependenciesLib.install_plan(dependenciesLib.check(dependencies=needed))
    if plan.empty:
        return True
    if plan.blocked:
        slicer.util.errorDisplay(_("Incompatible packages bundled with Slicer:\n") + "\n".join(plan.blocked))
        return False
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(plan.confirmation_text()):
        return False
    folder = Path(slicer.util.tempDirectory("LesionFactorizerInstall"))
    constraints = folder / "constraints.txt"
    constraints.write_text(dependenciesLib.protected_constraints(dependencies=needed), encoding="utf-8")
    try:
        with slicer.util.tryWithErrorDisplay(_("Installing Python packages failed."), waitCursor=True):
            if plan.torch:
                _install_torch(plan.torch, str(constraints))
            if plan.pip:
                slicer.util.pip_install(dependenciesLib.pip_arguments(plan, str(constraints)))
    except Exception:  # shown by tryWithErrorDisplay; the caller only needs "not ready"
        return False
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # The worker is a fresh process that imports the new packages itself: no restart needed,
    # only a check that the installation really satisfies the requirements now.
    importlib.invalidate_caches()
    problems = dependenciesLib.check(dependencies=needed)
    if problems:
        slicer.util.errorDisplay(_("These packages are still missing or incompatible:\n")
                                 + "\n".join(p.describe() for p in problems))
    return not problems


def _install_torch(requirement: str, constraints: str):
    """torch alone, by light-the-torch in a PythonSlicer child process (nothing is imported here)."""
    if dependenciesLib.installed_version("light-the-torch") is None:
        slicer.util.pip_install([LIGHT_THE_TORCH, "-c", constraints])
    slicer.util._executePythonModule("light_the_torch", ["install", requirement, "-c", constraints])
