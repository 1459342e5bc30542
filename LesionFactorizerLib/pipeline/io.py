"""Reading and checking input images, writing images, and atomic output folders.

Every problem a user can fix becomes a one-line :class:`UserError` that names the input and says
what to do; nothing is written before all inputs passed their checks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.pipeline.geometry import Geometry

IMAGE_FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "mha": ".mha"}


@dataclass
class InputImage:
    name: str
    path: str
    image: object          # SimpleITK.Image, float32, 3-D
    geometry: Geometry
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, **self.geometry.as_dict(), "notes": self.notes}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return next((t.strip() for t in text if t.strip() and not t.startswith("/")), type(exc).__name__)[:200]


def read_image(path: str | os.PathLike, name: str = "input"):
    """Read a NIfTI / NRRD / MHA file or a DICOM series folder as a float32 3-D SimpleITK image."""
    import SimpleITK as sitk

    path = Path(path)
    notes: list[str] = []
    if not path.exists():
        raise UserError(f"input {name}: {path} does not exist; check the path")
    if path.is_dir():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not ids:
            raise UserError(f"input {name}: folder {path} holds no DICOM series; give an image file or a DICOM "
                            "series folder")
        if len(ids) > 1:
            raise UserError(f"input {name}: folder {path} holds {len(ids)} DICOM series; put each series in its own "
                            "folder (one series per input)")
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise UserError(f"input {name}: cannot read the DICOM series in {path} ({_first_line(exc)})") from None
        notes.append(f"DICOM series {ids[0]} ({len(files)} files)")
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise UserError(f"input {name}: cannot read {path} as an image ({_first_line(exc)}); use NIfTI, NRRD, "
                            "MHA or a DICOM series folder") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"input {name}: {path} has {image.GetNumberOfComponentsPerPixel()} values per voxel "
                        "(colour or vector image); give a scalar MRI volume")
    dim = image.GetDimension()
    if dim == 4:
        volumes = image.GetSize()[3]
        if volumes != 1:
            raise UserError(f"input {name}: {path} is 4-D with {volumes} volumes (e.g. several b-values or time "
                            "points); extract the one volume to use (for DWI the b=1000 trace image) into a 3-D file")
        image = image[:, :, :, 0]
        notes.append("4-D file with a single volume: used as 3-D")
    elif dim != 3:
        raise UserError(f"input {name}: {path} is a {dim}-D image; a 3-D volume is required")
    if min(image.GetSize()) < 2:
        raise UserError(f"input {name}: {path} is a single slice ({'x'.join(map(str, image.GetSize()))}); "
                        "a 3-D volume is required")
    image = sitk.Cast(image, sitk.sitkFloat32)
    return image, notes


def check_values(image, name: str, path: str) -> None:
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise UserError(f"input {name}: {path} contains {bad} NaN or infinite voxel values; fix or re-export "
                        "the image")
    if float(array.min()) == float(array.max()):
        raise UserError(f"input {name}: {path} is constant (every voxel is {float(array.min()):g}); it holds no "
                        "image: check that the right file was given")


def load_inputs(paths: dict[str, str], order: list[str]) -> list[InputImage]:
    """Read and check every input (in the task's order); raises before anything is written."""
    inputs = []
    for name in order:
        if name not in paths:
            continue
        image, notes = read_image(paths[name], name)
        check_values(image, name, str(paths[name]))
        inputs.append(InputImage(name, str(paths[name]), image, Geometry.from_image(image), notes))
    return inputs


def overlap_fraction(a: Geometry, b: Geometry) -> float:
    """Fraction of ``a``'s axis-aligned physical bounding box that ``b``'s box covers."""
    alo, ahi = a.bounds()
    blo, bhi = b.bounds()
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None)
    return float(np.prod(inter) / max(np.prod(ahi - alo), 1e-12))


def align_to_reference(inputs: list[InputImage], reference: InputImage, warnings: list[str]) -> None:
    """Resample inputs on other grids onto the reference grid in physical space (linear)."""
    import SimpleITK as sitk

    for item in inputs:
        if item is reference:
            continue
        fraction = overlap_fraction(reference.geometry, item.geometry)
        if fraction <= 0.0:
            raise UserError(f"inputs {item.name} and {reference.name} do not overlap in physical space; they must be "
                            "co-registered images of the same patient and session (check origins/orientation)")
        if fraction < 0.5:
            warnings.append(f"input {item.name} covers only {fraction:.0%} of {reference.name}'s extent; "
                            "outside it the input is treated as zero")
        if not item.geometry.same_grid(reference.geometry):
            item.image = sitk.Resample(item.image, reference.image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                       sitk.sitkFloat32)
            warnings.append(f"input {item.name} was on a different grid and was resampled onto {reference.name}'s "
                            "grid in physical space (linear interpolation)")
            item.notes.append("resampled onto the reference grid")


def write_image(image, path: str | os.PathLike, compress: bool = True) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(image, str(path), compress)


# ------------------------------------------------------------------------------------------------
# Atomic output folder
# ------------------------------------------------------------------------------------------------
class AtomicOutput:
    """Write into a hidden temporary folder next to the output folder, then move into place.

    If anything fails (or the process is terminated) before :meth:`commit`, the output folder
    holds no new files. ``claims`` are the entry names this run writes; existing ones need
    ``overwrite``.
    """

    def __init__(self, final: str | os.PathLike, claims: list[str], overwrite: bool = False):
        self.final = Path(final).expanduser().absolute()
        self.claims = claims
        self.overwrite = overwrite
        self.tmp: Path | None = None
        self._created_parents: list[Path] = []

    def check(self) -> None:
        """Fail early (before any work) if the outputs cannot be written."""
        final = self.final
        if final.exists() and not final.is_dir():
            raise UserError(f"output {final} exists and is not a folder; choose a folder path")
        if final.is_dir() and not self.overwrite:
            existing = [c for c in self.claims if (final / c).exists()]
            if existing:
                raise UserError(f"output folder {final} already holds results ({', '.join(existing[:3])}); pass "
                                "--overwrite to replace them or choose another folder")
        probe_dir = final if final.is_dir() else next((p for p in final.parents if p.exists()), None)
        if probe_dir is None or not probe_dir.is_dir():
            raise UserError(f"cannot create output folder {final}; choose a folder in an existing, writable location")
        try:
            fd, probe = tempfile.mkstemp(prefix=".lesion-factorizer-probe-", dir=probe_dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise UserError(f"output folder {probe_dir} is not writable ({exc.strerror}); choose a writable folder "
                            "or fix its permissions") from None

    def __enter__(self) -> Path:
        self.check()
        parent = self.final.parent
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        try:
            for p in reversed(missing):
                p.mkdir()
                self._created_parents.append(p)
            self._remove_stale(parent)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.partial-{os.getpid()}-", dir=parent))
        except OSError as exc:
            self._remove_parents()
            raise UserError(f"cannot write next to {self.final} ({exc.strerror}); choose a writable folder") from None
        return self.tmp

    def commit(self) -> None:
        assert self.tmp is not None
        self.check()
        if not self.final.exists():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)   # mkdtemp makes it private; results are ordinary files
            os.rename(self.tmp, self.final)
        else:
            entries = sorted(os.listdir(self.tmp), key=lambda n: n == "report.json")  # report last: marks done
            # Results of an earlier run that this run does not write (components/, probabilities,
            # another format) would sit next to a report that does not list them: move them out
            # first, into the temporary folder that is deleted below. Other files are the user's.
            stale = [c for c in self.claims if c not in entries and os.path.lexists(self.final / c)]
            for name in stale:
                os.rename(self.final / name, self.tmp / f".old-{name}")
            for name in entries:
                src, dst = self.tmp / name, self.final / name
                if dst.is_dir() and not dst.is_symlink():
                    trash = self.tmp / f".old-{name}"
                    os.rename(dst, trash)
                    os.rename(src, dst)
                else:
                    os.replace(src, dst)
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
        self._created_parents = []

    def _remove_stale(self, parent: Path) -> None:
        """Remove temporary folders left by killed runs (SIGKILL cannot be cleaned up on the way out)."""
        for p in parent.glob(f".{self.final.name}.partial-*"):
            try:
                pid = int(p.name.rsplit(".partial-", 1)[1].split("-", 1)[0])
            except (IndexError, ValueError):
                continue
            if not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)

    def _remove_parents(self) -> None:
        for p in reversed(self._created_parents):
            try:
                p.rmdir()
            except OSError:
                pass
        self._created_parents = []

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
            self._remove_parents()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
