"""Which Python packages the worker needs, which are missing, and how to install them safely.

Checked without importing anything heavy (package metadata only), so the check is instant and a
broken torch install cannot crash Slicer. torch is installed through the PyTorch extension's
installer (it picks the CUDA build the driver supports); the rest through pip with tested ranges.
Packages Slicer bundles (`BUNDLED_WITH_SLICER`) are never installed or upgraded by us: replacing them
breaks Slicer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from LesionFactorizerLib.core.requirements import EXTRAS, OUTPUT_EXTRAS, REQUIRES


@dataclass(frozen=True)
class Dependency:
    requirement: str  # pip requirement with the tested range
    installer: str = "pip"  # "pip" or "pytorch" (the PyTorch extension's installer)
    bundled_with_slicer: bool = False  # never installed/upgraded by us

    @property
    def name(self) -> str:
        return Requirement(self.requirement).name


# Slicer bundles these (pydicom for its DICOM module): never installed or upgraded by us.
BUNDLED_WITH_SLICER = frozenset({"simpleitk", "numpy", "pydicom"})
# Library dependencies the worker never needs in Slicer: matplotlib draws only the overview PNG,
# which the module does not ask for.
NOT_NEEDED_IN_SLICER = ("matplotlib",)


def tested_range(requirement: str) -> Dependency:
    """The library's requirement (its floor: the oldest version tested) as the installer takes it:
    capped below the next major version (unknown API changes), except for what Slicer bundles."""
    req = Requirement(requirement)
    name = req.name.lower()
    if name in BUNDLED_WITH_SLICER:
        return Dependency(requirement, bundled_with_slicer=True)
    floor = next(s.version for s in req.specifier if s.operator == ">=")
    return Dependency(f"{requirement},<{Version(floor).major + 1}", installer="pytorch" if name == "torch" else "pip")


# The library's requirements (LesionFactorizerLib/core/requirements.py, also what pip installs).
DEPENDENCIES: tuple[Dependency, ...] = tuple(
    tested_range(r) for r in REQUIRES if Requirement(r).name.lower() not in NOT_NEEDED_IN_SLICER)
# Packages only some outputs need (the extras "dicom" and "slicer"), installed when a run first asks
# for that output. Slicer 5.10 bundles pydicom 2.4.4 with numpy 2, and no highdicom works with both
# (0.22, the last for pydicom 2, uses np.float_), so there DICOM SEG is refused before any install.
OUTPUT_DEPENDENCIES: dict[str, tuple[Dependency, ...]] = {
    output: tuple(tested_range(r) for r in EXTRAS[extra]) for output, extra in OUTPUT_EXTRAS.items()}


def required(format: str = "", dicom_seg: bool = False) -> tuple[Dependency, ...]:
    """The worker's packages for a run that writes ``format`` (and a DICOM SEG when asked)."""
    extra = OUTPUT_DEPENDENCIES.get(format, ()) + (OUTPUT_DEPENDENCIES["dicom_seg"] if dicom_seg else ())
    return DEPENDENCIES + extra


# The worker runs in Slicer's own Python (PythonSlicer). The library and the PyTorch builds it is
# tested with need Python 3.10+ (pyproject's requires-python; a test keeps the two equal), which
# Slicer ships from 5.10 on; Slicer 5.8 embeds 3.9. The module still loads there and says so.
MIN_PYTHON = (3, 10)
MIN_SLICER = "5.10"


def unsupported_python(version_info=sys.version_info) -> str:
    """Why segmentation cannot run in this Slicer's Python, or "" when it can."""
    if tuple(version_info[:2]) >= MIN_PYTHON:
        return ""
    return (f"Segmentation needs Slicer {MIN_SLICER} or newer: its worker needs Python "
            f"{'.'.join(map(str, MIN_PYTHON))}+, and this Slicer runs Python {version_info[0]}.{version_info[1]}. "
            f"Install the current Slicer release from download.slicer.org.")


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Problem:
    dependency: Dependency
    installed: str | None

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.dependency.requirement} (not installed)"
        return f"{self.dependency.requirement} (installed: {self.installed})"


def check(version_of: Callable[[str], str | None] = installed_version,
          dependencies: tuple[Dependency, ...] = DEPENDENCIES) -> list[Problem]:
    """Dependencies that are missing or outside their tested range."""
    problems = []
    for dep in dependencies:
        req = Requirement(dep.requirement)
        version = version_of(req.name)
        if version is None:
            problems.append(Problem(dep, None))
            continue
        try:
            ok = req.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            ok = True  # a local build with an odd version string: trust it
        if not ok:
            problems.append(Problem(dep, version))
    return problems


@dataclass(frozen=True)
class InstallPlan:
    torch: str | None  # requirement for the PyTorch extension's installer, or None
    pip: list[str]  # requirements for pip
    blocked: list[str]  # problems we refuse to fix automatically (Slicer's bundled packages)

    @property
    def empty(self) -> bool:
        return not (self.torch or self.pip or self.blocked)

    def confirmation_text(self) -> str:
        """The one dialog text that lists everything that will be installed."""
        lines = ["LesionFactorizer needs these Python packages in Slicer's Python:"]
        if self.torch:
            lines.append(f"  • {self.torch} (through the PyTorch extension; picks the GPU build if possible)")
        lines += [f"  • {req}" for req in self.pip]
        lines.append("The download may take several minutes.")
        return "\n".join(lines)


def install_plan(problems: list[Problem]) -> InstallPlan:
    torch, pip, blocked = None, [], []
    for problem in problems:
        dep = problem.dependency
        if dep.bundled_with_slicer:
            blocked.append(f"{problem.describe()}: bundled with Slicer; install a Slicer version that "
                           f"provides it instead of replacing it")
        elif dep.installer == "pytorch":
            torch = dep.requirement
        else:
            pip.append(dep.requirement)
    return InstallPlan(torch=torch, pip=pip, blocked=blocked)


def protected_constraints(version_of: Callable[[str], str | None] = installed_version,
                          dependencies: tuple[Dependency, ...] = DEPENDENCIES) -> str:
    """pip constraints pinning the packages Slicer bundles to the versions it ships.

    With these, pip fails with a message instead of silently replacing Slicer's numpy or
    SimpleITK when some package asks for another version.
    """
    lines = []
    for dep in dependencies:
        if dep.bundled_with_slicer and (version := version_of(dep.name)) is not None:
            lines.append(f"{dep.name}=={version}")
    return "\n".join(lines) + ("\n" if lines else "")


def pip_arguments(plan: InstallPlan, constraints_file: str | None = None) -> list[str]:
    """pip arguments for the non-torch part: tested ranges, bundled packages held where they are.

    ``--upgrade-strategy only-if-needed`` keeps pip from upgrading anything already satisfied;
    the constraints file (see :func:`protected_constraints`) pins Slicer's own packages.
    """
    if not plan.pip:
        return []
    constraints = ["-c", constraints_file] if constraints_file else []
    return ["--upgrade-strategy", "only-if-needed", *constraints, *plan.pip]
