"""Reading and checking input images, writing images, and atomic output folders.

Every problem a user can fix becomes a one-line :class:`UserError` that names the input and says
what to do; nothing is written before all inputs passed their checks.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.formats import IMAGE_FORMATS, LABEL_ONLY_FORMATS, map_suffix  # noqa: F401 (the writer's names, from their home)
from LesionFactorizerLib.pipeline.filecheck import check_nifti, file_sha256, nifti_size, read_bytes_checked
from LesionFactorizerLib.pipeline.geometry import Geometry

@dataclass
class InputImage:
    name: str
    path: str
    image: object          # SimpleITK.Image, float32, 3-D
    geometry: Geometry
    notes: list[str] = field(default_factory=list)
    sha256: str = ""       # of the file (or DICOM series) as read: a resumed batch compares it

    def describe(self) -> dict:
        # absolute: a later `counterfactual` (or reader) of report.json may run from another folder
        return {"name": self.name, "path": os.path.abspath(self.path), "sha256": self.sha256, **self.geometry.as_dict(),
                "notes": self.notes}


_LIBRARY_PREFIX = re.compile(r"^(\*\* )?(sitk::ERROR:|ITK ERROR:|ERROR:|WARNING:)?\s*(\w+ ?\(0x[0-9a-fA-F]+\):)?\s*")


def _library_messages(lines) -> list[str]:
    """What ITK/niftilib said, without their source locations, object addresses and duplicates."""
    lines = [t.strip() for t in lines if t.strip()]
    reasons = [_LIBRARY_PREFIX.sub("", t) for t in lines
               if not t.startswith(("/", "Exception thrown in SimpleITK", "WARNING: In ")) and ".cxx" not in t]
    return list(dict.fromkeys(r for r in reasons if r))


def _first_line(exc: Exception, said: list[str] = ()) -> str:
    """The reason in an ITK exception (and what niftilib printed alongside)."""
    reasons = _library_messages([*str(exc).strip().splitlines(), *said])
    teem = [r.split(": ", 1)[-1] for r in reasons if r.startswith("[nrrd]")]
    if teem:   # NRRD's reader nests its reasons: the innermost (last) one says what is wrong
        reasons = [teem[-1]]
    return ("; ".join(reasons[:2]) or type(exc).__name__)[:240]


# Physical voxel sizes an MRI volume can have (mm); outside them the header is wrong (0 read as
# 1 mm by ITK, 1e-6 from a unit mix-up), and the model grid derived from it would be nonsense.
SPACING_RANGE_MM = (0.01, 100.0)


@contextlib.contextmanager
def _native_stderr_captured():
    """ITK and niftilib print warnings straight to file descriptor 2; collect them so the user sees
    one ``error:`` line (with their reason in it) instead of library noise before it."""
    captured: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):   # no real fd 2 (embedded interpreters)
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.extend(line.strip() for line in sink.read().decode("utf-8", "replace").splitlines()
                            if line.strip())


def _path_problem(path: Path, name: str) -> None:
    """A path that cannot be an input: missing, a broken or looping link, unreadable."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"input {name}: {path} is a symbolic link loop; point it at the image file") from None
        if os.path.lexists(path):
            raise UserError(f"input {name}: {path} is a broken symbolic link; point it at the image file") from None
        if exc.errno == errno.ENOENT:
            raise UserError(f"input {name}: {path} does not exist; check the path") from None
        raise UserError(f"input {name}: cannot access {path} ({exc.strerror}); check the path and its "
                        "permissions") from None
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise UserError(f"input {name}: cannot read {path} (permission denied); fix its permissions")


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header announces, read without its voxels."""
    size: tuple[int, ...]       # voxels per axis (a DICOM series: rows, columns, files)
    spacing: tuple[float, ...]
    voxel_bytes: int            # one stored voxel, all its components

    @property
    def voxels(self) -> int:
        return math.prod(self.size)


def read_header(path: str | os.PathLike, name: str = "input") -> ImageHeader | None:
    """The header of an input file or DICOM series folder; None where it cannot be read alone
    (the full read then says what is wrong)."""
    path = Path(path)
    _path_problem(path, name)
    if path.is_dir():
        return _series_header(_series_files(path, name)[1])
    nifti = nifti_size(path)
    if nifti is not None:
        dims, spacing, voxel_bytes = nifti
        return ImageHeader(tuple(dims), tuple(float(s) for s in spacing), voxel_bytes)
    return _file_header(path)


def _file_header(path) -> ImageHeader | None:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    with _native_stderr_captured():
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return None
    kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = re.search(r"(\d+)-bit", kind)
    component = (int(bits.group(1)) // 8 if bits else 8) * (2 if kind.startswith("complex") else 1)
    return ImageHeader(tuple(reader.GetSize()), tuple(reader.GetSpacing()),
                       component * max(1, reader.GetNumberOfComponents()))


def _series_header(files: list[str]) -> ImageHeader | None:
    first = _file_header(files[0])
    if first is None:
        return None
    return ImageHeader((*first.size[:2], len(files)), first.spacing, first.voxel_bytes)


def check_header(header: ImageHeader | None, path, name: str) -> None:
    """Refuse a header whose dimensions overflow any address space, or an image this process
    cannot hold while it is read (stored and float32 copies), before a voxel is allocated."""
    from LesionFactorizerLib.pipeline.guards import refuse_beyond

    if header is None:
        return
    dims = "x".join(map(str, header.size))
    if header.voxels * max(header.voxel_bytes, 4) > sys.maxsize:
        raise UserError(f"input {name}: {path} announces {dims} voxels in its header, more than any computer can "
                        "address: the header is damaged; export the image again")
    need = header.voxels * (header.voxel_bytes + 4)
    refuse_beyond(need, f"input {name}: {path} announces {dims} voxels in its header, which need at least "
                        f"{need / 2**30:.3g} GiB of memory to read", "check that the image and its header are right")


def read_image(path: str | os.PathLike, name: str = "input"):
    """Read a NIfTI / NRRD / MHA file or a DICOM series folder as a float32 3-D SimpleITK image.

    Returns ``(image, notes, sha256)``; the checksum is of the file (or the series' files)."""
    import SimpleITK as sitk

    path = Path(path)
    notes: list[str] = []
    _path_problem(path, name)
    if path.is_dir():
        uid, files = _series_files(path, name)
        check_header(_series_header(files), path, name)
        image, sha = _read_dicom_series(path, uid, files, name, notes)
    else:
        check_header(read_header(path, name), path, name)
        data, sha = read_bytes_checked(path, name)
        check_nifti(data, path, name)
        del data
        with _native_stderr_captured() as said:
            try:
                image = sitk.ReadImage(str(path))
            except RuntimeError as exc:
                image, error = None, exc
        if image is None:
            reason = _first_line(error, said)
            if "No such file or directory" in reason:   # ITK's stale errno after a short read of a file we just read
                reason = "its data is damaged or truncated"
            elif "fread got only" in reason:
                reason = f"its data is damaged or truncated: {reason}"
            raise UserError(f"input {name}: cannot read {path} as an image ({reason}); use NIfTI, NRRD, MHA or a "
                            "DICOM series folder")
        notes += [f"reader: {line[:200]}" for line in _library_messages(said)[:3]]
    if image.GetPixelIDTypeAsString().startswith("complex"):
        raise UserError(f"input {name}: {path} holds complex values; give a real-valued (magnitude) MRI volume")
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
    check_grid(image, name, path)
    native = sitk.GetArrayViewFromImage(image)
    lo, hi = native.min(), native.max()
    image = sitk.Cast(image, sitk.sitkFloat32)
    if lo != hi and np.float32(lo) == np.float32(hi):
        raise UserError(f"input {name}: {path} holds values {lo}..{hi} that differ only beyond float32 precision "
                        f"({native.dtype} pixels); rescale the image to a usual intensity range")
    return image, notes, sha


def check_grid(image, name: str, path: Path) -> None:
    """Voxel sizes must be plausible and the axes orthonormal: a sheared or scaled direction matrix
    cannot be written back to NIfTI unchanged, so labels would land elsewhere than reported."""
    spacing = image.GetSpacing()
    lo, hi = SPACING_RANGE_MM
    if any(not (lo <= s <= hi) for s in spacing):
        raise UserError(f"input {name}: {path} has voxel size {tuple(round(s, 8) for s in spacing)} mm, outside "
                        f"the plausible {lo:g}–{hi:g} mm for an MRI volume; fix the voxel size in its header")
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise UserError(f"input {name}: {path} has a sheared or scaled direction matrix (axes not orthonormal); "
                        "resample it onto a regular grid (orthonormal axes) first")


def _series_files(path: Path, name: str) -> tuple[str, list[str]]:
    """The series UID and files of the one DICOM series in folder ``path``, in slice order."""
    import SimpleITK as sitk

    with _native_stderr_captured():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not ids:
        raise UserError(f"input {name}: folder {path} holds no DICOM series; give an image file or a DICOM "
                        "series folder")
    if len(ids) > 1:
        raise UserError(f"input {name}: folder {path} holds {len(ids)} DICOM series; put each series in its own "
                        "folder (one series per input)")
    with _native_stderr_captured():
        return ids[0], list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0]))


def _read_dicom_series(path: Path, uid: str, files: list[str], name: str, notes: list[str]):
    import SimpleITK as sitk

    check_slice_geometry(files, name, path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    with _native_stderr_captured() as said:
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            image, reason = None, _first_line(exc)
    if image is None:
        raise UserError(f"input {name}: cannot read the DICOM series in {path} ({reason})")
    notes.append(f"DICOM series {uid} ({len(files)} files)")
    return image, file_sha256(path)


# Angle between a series' slice step and its slices' normal above which it counts as tilted: real
# exports round orientations to ~1e-6, far below it; 0.05° shifts the last of 200 1-mm slices by 0.17 mm.
TILT_TOLERANCE_DEG = 0.05
_GEOMETRY_TAGS = {"0020|0032": "ImagePositionPatient (0020,0032)", "0020|0037": "ImageOrientationPatient (0020,0037)"}


def check_slice_geometry(files: list[str], name: str, path: Path) -> None:
    """ITK builds a series' grid from its first slice's position, the orientation's normal and the
    distance between positions; it is right only when every slice has both geometry tags, the
    orientation is one, the slices are stacked along its normal (no gantry tilt) and evenly spaced
    (no missing or duplicated slice). Any other series is refused: read, it would put lesions
    elsewhere and measure them wrongly (a series without positions becomes 1 mm slices at origin 0)."""
    import SimpleITK as sitk

    positions, orientations = [], []
    reader = sitk.ImageFileReader()
    for f in files:
        reader.SetFileName(f)
        try:
            with _native_stderr_captured():
                reader.ReadImageInformation()
        except RuntimeError:
            return   # ITK's series reader says what is wrong with the file
        missing = [label for tag, label in _GEOMETRY_TAGS.items() if not reader.HasMetaDataKey(tag)]
        try:
            ipp, iop = ([float(v) for v in reader.GetMetaData(tag).split("\\")] for tag in _GEOMETRY_TAGS)
        except (RuntimeError, ValueError):
            ipp, iop = [], []
        if missing or len(ipp) != 3 or len(iop) != 6:
            what = f"no {' and no '.join(missing)}" if missing else f"unreadable {' / '.join(_GEOMETRY_TAGS.values())}"
            raise UserError(f"input {name}: the DICOM series in {path} has {what} in {Path(f).name}, so its geometry "
                            "(slice spacing, orientation, position) is unknown and volumes would be wrong; export the "
                            "series with its geometry tags or convert it to NIfTI with the right geometry")
        positions.append(ipp)
        orientations.append(iop)
    orientations, positions = np.asarray(orientations), np.asarray(positions)
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise UserError(f"input {name}: the DICOM series in {path} changes its slice orientation from slice to slice; "
                        "it is not one volume: export each orientation as its own series")
    iop = orientations[0]
    normal = np.cross(iop[:3], iop[3:6])
    along = positions @ normal
    order = np.argsort(along)
    if len(files) >= 2:
        span = positions[order[-1]] - positions[order[0]]
        length = float(np.linalg.norm(span))
        tilt = float(np.degrees(np.arccos(min(1.0, abs(span @ normal) / length)))) if length > 0 else 0.0
        if tilt > TILT_TOLERANCE_DEG:
            raise UserError(f"input {name}: the DICOM series in {path} was acquired with a gantry tilt of {tilt:.1f}° "
                            "(its slices are not stacked along their normal), which would be read as a straight grid "
                            "with wrong positions and volumes; correct the tilt first (dcm2niix does; Slicer's DICOM "
                            "module can regularise the acquisition geometry) and give the result as NIfTI")
    if len(files) < 3:
        return
    steps = np.diff(along[order])
    typical = float(np.median(steps))
    if typical <= 0 or np.any(np.abs(steps - typical) > max(0.01, 0.05 * typical)):
        worst = int(np.argmax(np.abs(steps - typical)))
        raise UserError(f"input {name}: the DICOM series in {path} has unevenly spaced slices (a step of "
                        f"{steps[worst]:.3g} mm where the others are {typical:.3g} mm): a slice is missing or "
                        "duplicated; export the complete series again")


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


def load_inputs(paths: dict[str, str], order: list[str], warnings: list[str] | None = None) -> list[InputImage]:
    """Read and check every input (in the task's order); raises before anything is written."""
    inputs = []
    for name in order:
        if name not in paths:
            continue
        image, notes, sha = read_image(paths[name], name)
        check_values(image, name, str(paths[name]))
        for other in inputs:
            if os.path.samefile(other.path, paths[name]):
                raise UserError(f"inputs {other.name} and {name} are the same file ({paths[name]}); give each "
                                "input its own image")
            if other.sha256 == sha and warnings is not None:
                warnings.append(f"inputs {other.name} and {name} have identical contents ({other.path}, "
                                f"{paths[name]}); check that each input is the intended image")
        inputs.append(InputImage(name, str(paths[name]), image, Geometry.from_image(image), notes, sha))
    return inputs


def overlap_fraction(a: Geometry, b: Geometry) -> float:
    """Fraction of ``a``'s axis-aligned physical bounding box that ``b``'s box covers."""
    alo, ahi = a.bounds()
    blo, bhi = b.bounds()
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None)
    return float(np.prod(inter) / max(np.prod(ahi - alo), 1e-12))


def align_to_reference(inputs: list[InputImage], reference: InputImage, warnings: list[str]) -> None:
    """Resample inputs of the reference's session on other grids onto the reference grid in physical
    space (linear). Another session's input on another grid never comes here:
    ``registration.register_inputs`` resamples it by its own rule."""
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


def write_image(image, path: str | os.PathLike, compress: bool = True, level: int | None = None) -> None:
    """Write ``image`` and read it back: a short write (full disk, file-size limit) or a writer that
    changes the geometry must fail here, not leave a file that disagrees with report.json.
    ``level``: the zlib compression level (None: the writer's default); 1 halves the time of large
    float maps for ~20 % larger files."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        with _native_stderr_captured():
            writer = sitk.ImageFileWriter()
            writer.SetFileName(str(path))
            writer.SetUseCompression(compress)
            if compress and level is not None:
                writer.SetCompressionLevel(level)
            writer.Execute(image)
    except RuntimeError as exc:
        raise UserError(f"cannot write {path.name} ({_write_reason(path, _first_line(exc))}); free disk "
                        "space or choose another output folder") from None
    with _native_stderr_captured():
        try:
            back = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            back, reason = None, _first_line(exc)
    if back is None or _differs(image, back):
        why = reason if back is None else "it reads back different from what was written"
        raise UserError(f"writing {path.name} failed ({_write_reason(path, why)}); free disk space, "
                        "raise the file-size limit or choose another output folder")


def _write_reason(path: Path, reason: str) -> str:
    try:
        usage = shutil.disk_usage(path.parent)
        if usage.free < 1 << 20:
            return f"{reason}; the disk is full"
    except OSError:
        pass
    return reason


def _differs(a, b) -> bool:
    import SimpleITK as sitk

    if a.GetSize() != b.GetSize() or a.GetNumberOfComponentsPerPixel() != b.GetNumberOfComponentsPerPixel():
        return True
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        if not np.allclose(getattr(a, get)(), getattr(b, get)(), rtol=1e-5, atol=1e-4):
            return True
    return not np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


# ------------------------------------------------------------------------------------------------
# Atomic output folder
# ------------------------------------------------------------------------------------------------
class AtomicOutput:
    """Build the complete new output folder beside the old one, then swap it in with one rename.

    Results are written into a hidden temporary folder in the output's parent; :meth:`commit`
    carries the user's own files over (hard links), then exchanges the two folders atomically
    (``renameat2(RENAME_EXCHANGE)`` on Linux, ``renamex_np(RENAME_SWAP)`` on macOS; elsewhere two
    renames that an interrupted run's successor undoes). SIGTERM/SIGINT are held back during the
    swap, so the output folder always holds either the complete previous results or the complete
    new ones. ``claims`` are the entry names a run may write; existing ones need ``overwrite``.
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
        # The results are assembled in a temporary folder in the parent and swapped in by renaming
        # both folders: the parent and an existing output folder must be writable.
        parent = next((p for p in [final.parent, *final.parent.parents] if p.exists()), None)
        if parent is None or not parent.is_dir():
            raise UserError(f"cannot create output folder {final}; choose a folder in an existing, writable location")
        for probe_dir in ([final] if final.is_dir() else []) + [parent]:
            try:
                probe = tempfile.mkdtemp(prefix=".lesion-factorizer-probe-", dir=probe_dir)
                os.rmdir(probe)
            except OSError as exc:
                where = "" if probe_dir == final else (f" (the results are assembled there before they replace "
                                                       f"{final.name})")
                raise UserError(f"output folder {probe_dir} is not writable ({exc.strerror}){where}; choose a "
                                "writable location or fix its permissions") from None

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
        tmp, final = self.tmp, self.final
        if final.is_dir():
            self._carry_user_entries(final, tmp)
            os.chmod(tmp, final.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)   # mkdtemp makes it private; results are ordinary files
        _sync_tree(tmp)
        with _signals_held():
            if not final.exists():
                os.rename(tmp, final)
            else:
                _swap(tmp, final)   # now tmp holds the previous results
        self.tmp = None
        self._created_parents = []
        shutil.rmtree(tmp, ignore_errors=True)

    def _carry_user_entries(self, final: Path, tmp: Path) -> None:
        """Files in the output folder that are not results (the user's notes, …) stay: hard links,
        so the old folder is untouched until the swap."""
        for entry in os.listdir(final):
            if entry in self.claims or (tmp / entry).exists():
                continue
            src, dst = final / entry, tmp / entry
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            elif src.is_dir():
                shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(str(src), str(dst))

    def _remove_stale(self, parent: Path) -> None:
        """Remove temporary folders left by killed runs (SIGKILL cannot be cleaned up on the way out);
        a previous result moved aside by an interrupted two-rename swap is put back first."""
        for p in sorted(parent.glob(f".{self.final.name}.partial-*")):
            try:
                pid = int(p.name.rsplit(".partial-", 1)[1].split("-", 1)[0])
            except (IndexError, ValueError):
                continue
            if _pid_alive(pid):
                continue
            if p.name.endswith(_OLD_SUFFIX) and not self.final.exists():
                os.rename(p, self.final)
            else:
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
        if isinstance(exc, OSError) and not isinstance(exc, UserError):
            raise UserError(f"cannot write the results for {self.final} ({exc.strerror or exc}); nothing was "
                            "changed there: free disk space or choose another folder") from None


_OLD_SUFFIX = "-previous"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _sync_tree(root: Path) -> None:
    """Flush the new results to disk before they replace the old ones (a power cut after the
    rename must not leave an empty file under a complete-looking folder)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    for folder, _, files in os.walk(root):
        for path, flags in [(os.path.join(folder, n), os.O_RDONLY) for n in files] + \
                [(folder, os.O_RDONLY | os.O_DIRECTORY)]:
            try:
                fd = os.open(path, flags)
            except OSError:
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)


@contextlib.contextmanager
def _signals_held():
    """Hold SIGTERM/SIGINT back while the folders are swapped; they are delivered right after."""
    import signal
    import threading

    held = {signal.SIGTERM, signal.SIGINT}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _swap(new: Path, final: Path) -> None:
    """Exchange two folders atomically; without kernel support, rename the old one aside first
    (an interrupted run leaves it as ``.<name>.partial-PID-…-previous``, restored by the next run)."""
    if _exchange(str(new), str(final)):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", suffix=_OLD_SUFFIX,
                                  dir=final.parent))
    os.rmdir(aside)
    os.rename(final, aside)
    os.rename(new, final)
    os.rename(aside, new)


def _exchange(a: str, b: str) -> bool:
    """Atomically exchange two paths; False where the platform or file system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    enc = os.fsencode
    if hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        if libc.renameat2(at_fdcwd, enc(a), at_fdcwd, enc(b), rename_exchange) == 0:
            return True
    elif hasattr(libc, "renamex_np"):
        if libc.renamex_np(enc(a), enc(b), 2) == 0:   # RENAME_SWAP
            return True
    else:
        return False
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


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
