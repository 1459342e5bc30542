"""Results back to PACS and to Slicer files, on real files.

The bundled stroke sample (cropped around its lesion to keep the run short) is written as a DICOM
MR series, slice by slice with SimpleITK, and segmented by the real ``segment`` command with the
bundled demo model, ``--dicom-seg`` and ``--format seg.nrrd``. The DICOM SEG is then read back with
pydicom alone (frame by frame: referenced instance, plane position, pixels) and with highdicom, and
the seg.nrrd with slicerio; both must equal the segmentation exactly, on the source grid.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio
from helpers import REPO, main_in_process

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.tasks import get_task

SAMPLES = REPO / "Resources" / "SampleData"
STUDY_UID = "1.2.826.0.1.3680043.8.498.10"
SERIES_UID = "1.2.826.0.1.3680043.8.498.11"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.8.498.12"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "LesionFactorizerLib", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, encoding="utf-8")


def crop_around_lesion(name: str, half_mm: float = 30.0):
    """The sample image cropped to a box around the sample's lesion (a user's Crop Volume)."""
    label = sitk.ReadImage(str(SAMPLES / "stroke_label.nii.gz"))
    centre = np.round(np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(axis=0)).astype(int)[::-1]  # (i, j, k)
    image = sitk.ReadImage(str(SAMPLES / name))
    half = np.ceil(half_mm / np.asarray(image.GetSpacing())).astype(int)
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half, image.GetSize())
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def write_dicom_series(image, folder: Path, drop: tuple[str, ...] = ()) -> list[str]:
    """An MR series, one file per slice, with the tags a scanner writes (less ``drop``); returns the
    SOP Instance UIDs in slice order (k)."""
    folder.mkdir(parents=True)
    image = sitk.Cast(sitk.RescaleIntensity(image, 0, 4000), sitk.sitkInt16)
    d = image.GetDirection()
    tags = {"0008|0016": MR_IMAGE_STORAGE, "0008|0060": "MR", "0010|0010": "Phantom^Stroke", "0010|0020": "LF0001",
            "0020|000d": STUDY_UID, "0020|000e": SERIES_UID, "0020|0052": FRAME_OF_REFERENCE_UID,
            "0008|103e": "DWI b1000", "0020|0011": "7", "0008|0020": "20260101",
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0028|0030": "\\".join(f"{v:.6f}" for v in image.GetSpacing()[1::-1]),
            "0018|0050": f"{image.GetSpacing()[2]:.6f}"}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uids = []
    # written in reverse order under shuffled names: the SEG must place slices by position, not by file
    for k in reversed(range(image.GetDepth())):
        slice_ = image[:, :, k]
        for tag, value in tags.items():
            if tag not in drop:
                slice_.SetMetaData(tag, value)
        uid = f"{SERIES_UID}.{k + 1}"
        slice_.SetMetaData("0008|0018", uid)
        slice_.SetMetaData("0020|0013", str(k + 1))
        slice_.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        writer.SetFileName(str(folder / f"IM{(k * 7919) % 1000:04d}_{k}.dcm"))
        writer.Execute(slice_)
        uids.append(uid)
    return uids[::-1]


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    """One real CLI run: DWI as a DICOM series folder, ADC as NIfTI; --dicom-seg and seg.nrrd."""
    root = tmp_path_factory.mktemp("dicomseg")
    dwi = crop_around_lesion("stroke_dwi.nii.gz")
    sitk.WriteImage(crop_around_lesion("stroke_adc.nii.gz"), str(root / "adc.nii.gz"))
    uids = write_dicom_series(dwi, root / "dwi")
    out = root / "out"
    proc = cli("segment", "--task", "stroke", "--input", f"dwi={root / 'dwi'}", "--input", f"adc={root / 'adc.nii.gz'}",
               "--output", out, "--dicom-seg", "--format", "seg.nrrd", "--preset", "fast", "--device", "cpu",
               "--no-overview", "--probabilities", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return {"root": root, "out": out, "uids": uids, "report": report, "outputs": json.loads(proc.stdout)}


def source_grid(root: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(root / "dwi")))
    return reader.Execute()


@pytest.mark.slow
def test_the_run_writes_both_files_and_says_so(dicom_run):
    out, report, outputs = dicom_run["out"], dicom_run["report"], dicom_run["outputs"]
    assert outputs["segmentation"] == str(out / "segmentation.seg.nrrd")
    assert outputs["dicom_seg"] == str(out / "segmentation.dcm")
    assert outputs["probabilities"] == str(out / "probabilities.nrrd")   # maps are not segmentations
    assert report["outputs"]["dicom_seg"] == "segmentation.dcm"
    entry = report["dicom_seg"]
    assert entry["referenced_series_instance_uid"] == SERIES_UID
    assert entry["not_for_clinical_use"] is True   # the bundled model is a demo model
    assert report["volumes_ml"]["infarct"] > 0, "the sample lesion was not found"
    assert not list(dicom_run["root"].glob(".out.partial-*"))


@pytest.mark.slow
def test_dicom_seg_references_the_source_series_and_maps_onto_its_frames(dicom_run):
    out, uids, report = dicom_run["out"], dicom_run["uids"], dicom_run["report"]
    task = get_task("stroke")
    seg = pydicom.dcmread(out / "segmentation.dcm")
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert (seg.StudyInstanceUID, seg.PatientID, seg.FrameOfReferenceUID) == (STUDY_UID, "LF0001", FRAME_OF_REFERENCE_UID)
    assert seg.SeriesInstanceUID != SERIES_UID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == SERIES_UID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(uids)
    assert "NOT FOR CLINICAL USE" in seg.SeriesDescription and "NOT FOR CLINICAL USE" in seg.ImageComments

    # segments: the task's labels with their codes, and the model that made them
    assert len(seg.SegmentSequence) == len(task.labels)
    for item, label in zip(seg.SegmentSequence, task.labels):
        assert (item.SegmentNumber, item.SegmentLabel) == (label.value, label.title)
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        category, type_ = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == (label.category.value, "SCT")
        assert (type_.CodeValue, type_.CodeMeaning) == (label.type.value, label.type.meaning)
        assert item.AnatomicRegionSequence[0].CodeValue == label.region.value
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == report["model"]["name"] == "demo-stroke"
        assert report["model"]["sha256"] in algorithm.AlgorithmParameters
        assert algorithm.AlgorithmVersion

    # every frame: the instance it references, that instance's position, and the labels of that slice
    labels = np.transpose(slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))["voxels"], (2, 1, 0))
    grid = source_grid(dicom_run["root"])
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in (dicom_run["root"] / "dwi").iterdir()}
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    seen = set()
    for frame, groups in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        uid = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in groups.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in sources[uid].ImagePositionPatient], atol=1e-4)
        k = grid.TransformPhysicalPointToIndex(position)[2]
        assert uid == uids[k]
        # one segment: highdicom may put the segment number in the shared functional groups
        identification = groups.get("SegmentIdentificationSequence") or \
            seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
        number = identification[0].ReferencedSegmentNumber
        assert np.array_equal(frame.astype(bool), labels[k] == number), f"frame of slice {k} differs"
        seen.add((uid, number))
    assert seen == {(uid, lb.value) for uid in uids for lb in task.labels}
    assert labels.any()


@pytest.mark.slow
def test_dicom_seg_reads_back_with_highdicom(dicom_run):
    import highdicom as hd

    out, uids = dicom_run["out"], dicom_run["uids"]
    seg = hd.seg.segread(str(out / "segmentation.dcm"))
    volume = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    labels = np.transpose(slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))["voxels"], (2, 1, 0))
    assert np.array_equal(volume, labels)
    assert seg.get_segment_description(1).segmented_property_type.value == get_task("stroke").labels[0].type.value


@pytest.mark.slow
def test_seg_nrrd_opens_with_names_colours_terminology_and_the_source_geometry(dicom_run):
    out, report = dicom_run["out"], dicom_run["report"]
    task = get_task("stroke")
    seg = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))
    (segment,) = seg["segments"]
    label = task.labels[0]
    assert (segment["name"], segment["labelValue"], segment["id"]) == (label.title, label.value, label.name)
    assert np.allclose(segment["color"], [c / 255 for c in label.color], atol=1e-6)
    assert slicerio.segmentation.terminology_entry_to_string(segment["terminology"]) == label.terminology_entry()
    assert segment["terminology"]["type"] == ["SCT", label.type.value, label.type.meaning]
    grid = source_grid(dicom_run["root"])
    ijk_to_lps = seg["ijkToLPS"]
    assert seg["voxels"].shape == grid.GetSize()
    assert np.allclose(ijk_to_lps[:3, 3], grid.GetOrigin(), atol=1e-4)
    assert np.allclose(ijk_to_lps[:3, :3], np.reshape(grid.GetDirection(), (3, 3)) * grid.GetSpacing(), atol=1e-5)
    voxel_ml = float(np.prod(grid.GetSpacing())) / 1000
    assert np.isclose(np.count_nonzero(seg["voxels"] == 1) * voxel_ml, report["volumes_ml"]["infarct"], atol=1e-3)
    # the same voxels as the plain label file a segment run writes in another format
    lo = np.argwhere(seg["voxels"] == 1).min(axis=0)
    assert list(segment["extent"][0::2]) == lo.tolist()


def test_an_empty_segmentation_still_writes_every_segment(tmp_path):
    """No lesion: the SEG keeps one (empty) frame per slice and segment, seg.nrrd its empty segments."""
    import highdicom as hd

    from LesionFactorizerLib.modelfile import read_spec
    from LesionFactorizerLib.pipeline import dicomseg
    from LesionFactorizerLib.pipeline.io import read_image
    from LesionFactorizerLib.pipeline.segnrrd import write_seg_nrrd

    task = get_task("tumor")
    uids = write_dicom_series(crop_around_lesion("stroke_dwi.nii.gz", 12), tmp_path / "series")
    image, _, _ = read_image(tmp_path / "series", "flair")
    empty = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    labels = sitk.GetImageFromArray(empty)
    labels.CopyInformation(image)
    write_seg_nrrd(labels, tmp_path / "s.seg.nrrd", task)
    back = slicerio.read_segmentation(str(tmp_path / "s.seg.nrrd"))
    assert [s["name"] for s in back["segments"]] == [lb.title for lb in task.labels]
    assert not back["voxels"].any()

    spec = read_spec(REPO / "Resources" / "Models" / "demo-tumor.safetensors")
    model = dicomseg.model_identity(spec, "demo-tumor", "0" * 64)
    sources = dicomseg.source_slices(tmp_path / "series", image, "flair")
    info = dicomseg.write_dicom_seg(empty, sources, task, [model], tmp_path / "empty.dcm", "test")
    assert info["frames"] == len(uids) * len(task.labels)
    seg = hd.seg.segread(str(tmp_path / "empty.dcm"))
    assert [d.segment_number for d in seg.SegmentSequence] == [1, 2, 3]
    assert not seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True).any()


def test_dicom_seg_needs_a_dicom_reference_and_says_so_before_any_work(tmp_path):
    out = tmp_path / "out"
    proc = main_in_process("segment", "--task", "stroke", "--input", f"dwi={SAMPLES / 'stroke_dwi.nii.gz'}",
                           "--input", f"adc={SAMPLES / 'stroke_adc.nii.gz'}", "--output", out, "--dicom-seg",
                           "--progress", "none")
    assert proc.returncode == 2
    (line,) = [t for t in proc.stderr.splitlines() if t.strip()]
    assert line.startswith("error: --dicom-seg needs the reference input dwi as a DICOM series folder"), line
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_a_series_that_is_not_on_one_grid_is_refused(tmp_path):
    from LesionFactorizerLib.pipeline import dicomseg
    from LesionFactorizerLib.pipeline.io import read_image

    write_dicom_series(crop_around_lesion("stroke_dwi.nii.gz", 12), tmp_path / "series")
    image, _, _ = read_image(tmp_path / "series", "dwi")
    shifted = sitk.Image(image)
    shifted.SetOrigin([v + 0.5 for v in image.GetOrigin()])
    with pytest.raises(UserError, match="does not lie on a slice"):
        dicomseg.source_slices(tmp_path / "series", shifted, "dwi")


def test_a_series_without_what_a_seg_needs_is_a_clear_error(tmp_path):
    """No Frame of Reference UID: one line naming the series, nothing written. (No SliceThickness, a
    Type 2 attribute, is fine: the SEG's own slice thickness is the grid's spacing.)"""
    from LesionFactorizerLib.modelfile import read_spec
    from LesionFactorizerLib.pipeline import dicomseg
    from LesionFactorizerLib.pipeline.io import read_image

    task = get_task("stroke")
    model = dicomseg.model_identity(read_spec(REPO / "Resources" / "Models" / "demo-stroke.safetensors"), "m", "0" * 64)
    write_dicom_series(crop_around_lesion("stroke_dwi.nii.gz", 12), tmp_path / "thin", drop=("0018|0050",))
    image, _, _ = read_image(tmp_path / "thin", "dwi")
    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    labels[2, 3:5, 3:6] = 1
    dicomseg.write_dicom_seg(labels, dicomseg.source_slices(tmp_path / "thin", image, "dwi"), task, [model],
                             tmp_path / "thin.dcm", "test")
    assert float(pydicom.dcmread(tmp_path / "thin.dcm").SharedFunctionalGroupsSequence[0]
                 .PixelMeasuresSequence[0].SliceThickness) == pytest.approx(image.GetSpacing()[2])

    write_dicom_series(crop_around_lesion("stroke_dwi.nii.gz", 12), tmp_path / "nofor", drop=("0020|0052",))
    image, _, _ = read_image(tmp_path / "nofor", "dwi")
    with pytest.raises(UserError, match=f"cannot make a DICOM SEG over series {SERIES_UID}"):
        dicomseg.write_dicom_seg(labels, dicomseg.source_slices(tmp_path / "nofor", image, "dwi"), task, [model],
                                 tmp_path / "nofor.dcm", "test")
    assert not (tmp_path / "nofor.dcm").exists()


@pytest.mark.slow
def test_missing_packages_are_named_before_any_work(monkeypatch):
    from LesionFactorizerLib.pipeline.segment import Segmenter
    from LesionFactorizerLib.core.settings import SegmentSettings

    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(UserError, match=r"lesion-factorizer\[dicom\]"):
        Segmenter(SegmentSettings(task="stroke", dicom_seg=True))
    monkeypatch.setitem(sys.modules, "slicerio", None)
    with pytest.raises(UserError, match=r"slicerio"):
        Segmenter(SegmentSettings(task="stroke", format="seg.nrrd"))
