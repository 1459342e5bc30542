"""Results back to PACS: a DICOM Segmentation object (highdicom) over the reference DICOM series.

The SEG references the very instances the reference input was read from, one frame per source
slice and segment, with the task's coded terminology (``core/tasks.py``) and the model's identity in the
algorithm identification. The source slices are matched to the label volume's slices by their
position in space, not by file order, and the written file is read back (pydicom + highdicom) and
compared voxel for voxel before the output folder is committed, so a PACS never receives a SEG
whose frames land on other slices than the labels the report describes.

Needs ``highdicom`` (``pip install lesion-factorizer[dicom]``); :func:`require` says so before any
work when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.reportspec import OUTPUTS

FILE_NAME = OUTPUTS.dicom_seg.name
MANUFACTURER = "LesionFactorizer"
DEMO_NOTICE = "NOT FOR CLINICAL USE"
# Position tolerance (mm) when matching source slices to the label volume's slices: far below any
# slice spacing, far above the rounding of DS values (16 characters) in ImagePositionPatient.
_POSITION_TOL_MM = 1e-3


@dataclass(frozen=True)
class ModelIdentity:
    """What the SEG records of a model that produced it."""

    name: str
    sha256: str
    version: str = ""        # the model file's ``created`` stamp: the version a model file carries
    architecture: str = ""
    demo: bool = False       # spec.provenance.training["demo"]: trained on synthetic data only


def model_identity(spec: Any, name: str, sha256: str) -> ModelIdentity:
    """From a parsed model spec (``spec.ModelSpec``) and the file's name and SHA-256."""
    prov = spec.provenance
    return ModelIdentity(name=name, sha256=sha256, version=prov.created or prov.library_version,
                         architecture=spec.architecture.name, demo=prov.training.get("demo") is True)


def require() -> None:
    """Fail before any work when the DICOM packages are missing."""
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--dicom-seg needs the highdicom and pydicom packages ({exc.name} is not installed); "
                        "install them with `pip install lesion-factorizer[dicom]`") from None


def check_reference_is_dicom(path: str, name: str) -> None:
    """The SEG references the reference input's DICOM instances: that input must be a series folder."""
    if not Path(path).is_dir():
        raise UserError(f"--dicom-seg needs the reference input {name} as a DICOM series folder, but {path} is a "
                        "file; give that input's DICOM series folder, or leave out --dicom-seg")


def source_slices(folder: str | Path, image, name: str) -> list:
    """The reference series' datasets in the label volume's slice order (index k of the array).

    Each instance is placed by its ImagePositionPatient on the image's grid; an instance that is off
    the grid, a slice without an instance, or a multi-frame object is a UserError (the SEG could not
    map its frames onto the source exactly)."""
    import pydicom
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]) if ids else []
    size = image.GetSize()
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    if len(datasets) != size[2] or any(int(getattr(ds, "NumberOfFrames", 1) or 1) != 1 for ds in datasets):
        raise UserError(f"--dicom-seg: input {name} ({folder}) is not a series of single-frame slices "
                        f"({len(datasets)} files for {size[2]} slices); give a classic single-frame series")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    ordered: list = [None] * size[2]
    for ds in datasets:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        index = np.linalg.solve(direction * spacing, position - origin)   # continuous (i, j, k)
        k = int(round(index[2]))
        if (np.abs(index[:2]) * spacing[:2] > _POSITION_TOL_MM).any() or \
                abs(index[2] - k) * spacing[2] > _POSITION_TOL_MM or not 0 <= k < size[2] or ordered[k] is not None \
                or (int(ds.Rows), int(ds.Columns)) != (size[1], size[0]):
            raise UserError(f"--dicom-seg: instance {ds.SOPInstanceUID} of input {name} does not lie on a slice of "
                            "the series' grid; export the series again (consistent positions and orientation)")
        if not getattr(ds, "SliceThickness", None):
            # Type 2 (may be empty) in MR images, but the SEG's pixel measures copy it: on this
            # in-memory copy only, the thickness of the SEG's own slices is the grid's spacing.
            ds.SliceThickness = f"{spacing[2]:.6g}"
        ordered[k] = ds
    return ordered


def write_dicom_seg(labels: np.ndarray, sources: Sequence, task: Any, models: Sequence[ModelIdentity],
                    path: str | Path, software_version: str) -> dict[str, Any]:
    """Write ``labels`` (uint8, (K, J, I) on the reference grid; ``sources[k]`` is slice k) as a
    DICOM SEG with one segment per task label, read it back and compare; returns what it records."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    if labels.shape[0] != len(sources):
        raise ValueError("one source instance per label slice is needed")
    demo = any(m.demo for m in models)
    name = " + ".join(m.name for m in models)
    parameters = {"task": task.name, "model_sha256": ",".join(m.sha256 for m in models),
                  "architecture": ",".join(sorted({m.architecture for m in models if m.architecture}))}
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_lo(name), family=codes.cid7162.ArtificialIntelligence,
        version=_lo(models[0].version or f"sha256:{models[0].sha256[:16]}"),
        source=_lo(f"lesion-factorizer {software_version}"), parameters=parameters)
    descriptions = []
    for label in task.labels:
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=int(label.value), segment_label=_lo(label.title),
            segmented_property_category=_code(label.category), segmented_property_type=_code(label.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[_code(label.region)] if label.region else None))
    if [d.SegmentNumber for d in descriptions] != list(range(1, len(descriptions) + 1)):
        raise ValueError(f"task {task.name} labels must be numbered 1..N for a DICOM SEG")
    notice = f"{DEMO_NOTICE}: " if demo else ""
    try:
        seg = _segmentation(hd, sources, labels, descriptions, name, software_version, task, notice)
    except (ValueError, TypeError, AttributeError) as exc:   # the source series lacks what a SEG needs
        raise UserError(f"--dicom-seg: cannot make a DICOM SEG over series {sources[0].SeriesInstanceUID} "
                        f"({str(exc).splitlines()[0][:200]}); the series may lack required DICOM attributes") from None
    if demo:   # where viewers show free-text remarks about an object
        seg.ImageComments = (f"{DEMO_NOTICE}. Produced by demonstration model(s) {name}, trained only on "
                             "synthetic phantoms; demonstration only.")
    seg.save_as(path)
    verify_dicom_seg(path, labels, sources, task)
    return {"file": path.name, "series_instance_uid": str(seg.SeriesInstanceUID),
            "sop_instance_uid": str(seg.SOPInstanceUID),
            "referenced_series_instance_uid": str(sources[0].SeriesInstanceUID), "frames": int(seg.NumberOfFrames),
            "not_for_clinical_use": demo}


def _segmentation(hd, sources, labels, descriptions, name, software_version, task, notice):
    return hd.seg.Segmentation(
        source_images=list(sources), pixel_array=np.ascontiguousarray(labels, dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=_series_number(sources), sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=_lo(name),
        software_versions=_lo(f"lesion-factorizer {software_version}"), device_serial_number="none",
        series_description=_lo(f"{notice}{task.title} ({name})"),
        content_description=_lo(f"{notice}{task.name} segmentation"), content_label="LESIONS",
        omit_empty_frames=False)   # every source slice gets a frame per segment, empty or not


def write_case_dicom_seg(labels_img, reference: Any, task: Any, loaded: Sequence[Any], folder: Path,
                         software_version: str) -> dict[str, Any]:
    """The run's SEG (``FILE_NAME`` in ``folder``) from the label image on the reference input's grid;
    ``reference`` is the reference :class:`~LesionFactorizerLib.pipeline.io.InputImage` (a DICOM
    series folder), ``loaded`` the run's models. Returns the report's ``dicom_seg`` entry."""
    import SimpleITK as sitk

    sources = source_slices(reference.path, reference.image, reference.name)
    models = [model_identity(m.spec, m.name, m.sha256) for m in loaded]
    return write_dicom_seg(sitk.GetArrayViewFromImage(labels_img), sources, task, models, Path(folder) / FILE_NAME,
                           software_version)


def verify_dicom_seg(path: Path, labels: np.ndarray, sources: Sequence, task: Any) -> None:
    """Read the SEG back and check that it references the source series and, slice by slice,
    holds exactly ``labels``; a mismatch is a UserError (the output folder is then not committed)."""
    import highdicom as hd

    try:
        back = hd.seg.segread(str(path))
    except Exception as exc:   # a damaged or short file: any reader error means the same to the user
        raise UserError(f"writing {path.name} failed (it cannot be read back: {exc}); free disk space or choose "
                        "another output folder") from None
    series = {str(s.SeriesInstanceUID) for s in sources}
    referenced = {str(item.SeriesInstanceUID) for item in back.ReferencedSeriesSequence}
    numbers = [int(d.SegmentNumber) for d in back.SegmentSequence]
    uids = [str(s.SOPInstanceUID) for s in sources]
    # Per source instance (slice order of the labels), the segments combined into one label map.
    rebuilt = back.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                                 combine_segments=True, relabel=False,
                                                 assert_missing_frames_are_empty=True)
    if referenced != series or numbers != [lb.value for lb in task.labels] or \
            not np.array_equal(np.asarray(rebuilt), labels):
        raise UserError(f"writing {path.name} failed (it reads back different from the segmentation); report "
                        "this as a bug with the input series")


def _code(code: Any):
    """A ``tasks.Code`` as the pydicom Code highdicom takes."""
    from pydicom.sr.coding import Code

    return Code(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _series_number(sources: Sequence) -> int:
    """A number after the source series', so the SEG sorts next to it in PACS lists."""
    try:
        return int(sources[0].SeriesNumber) + 1000
    except (AttributeError, TypeError, ValueError):
        return 1000


def _lo(text: str) -> str:
    """DICOM LO values hold at most 64 characters and no backslash."""
    text = text.replace("\\", "/")
    return text if len(text) <= 64 else text[:61] + "..."
