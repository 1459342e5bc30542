"""Reading and checking inputs (files, DICOM series, 4-D), and the atomic output folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import grid, sample, save_threshold_model, write_case, write_dicom_series

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.pipeline.geometry import Geometry
from LesionFactorizerLib.pipeline.io import AtomicOutput, read_image
from LesionFactorizerLib.pipeline.segment import segment_case
from LesionFactorizerLib.core.settings import SegmentSettings


def geometry_from_tags(folder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origin, spacing and direction (columns: row, column, slice axes) of a DICOM series computed
    from its tags with pydicom, not ITK: slices sorted along the orientation's normal."""
    import pydicom

    slices = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    iop = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    positions = sorted((np.array(s.ImagePositionPatient, float) for s in slices), key=lambda p: p @ normal)
    step = positions[1] - positions[0]
    row_mm, col_mm = map(float, slices[0].PixelSpacing)   # between rows, between columns
    spacing = np.array([col_mm, row_mm, np.linalg.norm(step)])
    return positions[0], spacing, np.column_stack([iop[:3], iop[3:], step / np.linalg.norm(step)])


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path):
    geom = grid((24, 20, 8), (1.2, 1.2, 3.0))
    write_dicom_series(sample(geom), tmp_path / "dwi")
    image, notes, _ = read_image(tmp_path / "dwi", "dwi")
    got = Geometry.from_image(image)
    assert got.size == geom.size
    assert np.allclose(got.spacing, geom.spacing, atol=1e-4) and np.allclose(got.origin, geom.origin, atol=1e-3)
    assert "DICOM series" in notes[0]


def test_oblique_dicom_series_geometry_matches_its_tags(tmp_path):
    """An oblique (rotated, not tilted) series: origin, spacing and axes as pydicom reads the tags."""
    from helpers import rotation

    write_dicom_series(sample(grid((24, 20, 8), (1.1, 1.3, 3.0), rotation(0, 20) @ rotation(2, 10))), tmp_path / "dwi")
    image, _, _ = read_image(tmp_path / "dwi", "dwi")
    origin, spacing, direction = geometry_from_tags(tmp_path / "dwi")
    assert np.allclose(image.GetOrigin(), origin, atol=1e-3)
    assert np.allclose(image.GetSpacing(), spacing, atol=1e-4)
    assert np.allclose(np.array(image.GetDirection()).reshape(3, 3), direction, atol=1e-5)


def test_gantry_tilted_dicom_series_is_refused_naming_the_tilt(tmp_path):
    """Read as an orthogonal grid, a 15° tilted series loses the tilt: slice spacing, positions and
    volumes are wrong. The tilt the message names is the angle between the slice step and the
    orientation's normal, computed here from the tags."""
    write_dicom_series(sample(grid((24, 20, 8), (1.2, 1.2, 2.0))), tmp_path / "dwi", tilt_deg=15.0)
    _, _, direction = geometry_from_tags(tmp_path / "dwi")
    iop_normal = np.cross(direction[:, 0], direction[:, 1])
    tilt = np.degrees(np.arccos(abs(direction[:, 2] @ iop_normal)))
    assert abs(tilt - 15.0) < 0.01
    with pytest.raises(UserError) as info:
        read_image(tmp_path / "dwi", "dwi")
    message = str(info.value)
    assert f"gantry tilt of {tilt:.1f}°" in message and "\n" not in message, message


@pytest.mark.parametrize("missing", [("0020|0032",), ("0020|0037",), ("0020|0032", "0020|0037")])
def test_dicom_series_without_position_or_orientation_is_refused(tmp_path, missing):
    """Without them ITK assumes 1 mm slices, the identity orientation and origin 0: a 54 mL infarct
    read as 24 mL. Refused, naming the missing tag."""
    write_dicom_series(sample(grid((24, 20, 8), (1.2, 1.2, 2.0))), tmp_path / "dwi", omit=missing)
    with pytest.raises(UserError) as info:
        read_image(tmp_path / "dwi", "dwi")
    message = str(info.value)
    names = {"0020|0032": "ImagePositionPatient", "0020|0037": "ImageOrientationPatient"}
    assert all(names[tag] in message for tag in missing) and "geometry" in message, message


def test_folder_with_two_series_is_refused(tmp_path):
    geom = grid((10, 10, 4), (1.0, 1.0, 2.0))
    write_dicom_series(sample(geom), tmp_path / "mixed", series_uid="1.2.3.4")
    write_dicom_series(sample(geom), tmp_path / "mixed2", series_uid="1.2.3.5")
    for p in (tmp_path / "mixed2").iterdir():
        p.rename(tmp_path / "mixed" / f"b_{p.name}")
    with pytest.raises(UserError, match="2 DICOM series"):
        read_image(tmp_path / "mixed", "dwi")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no DICOM series"):
        read_image(tmp_path / "empty", "dwi")


def test_four_d_images_single_volume_is_used_several_are_refused(tmp_path):
    one = sitk.JoinSeries([sitk.GetImageFromArray(np.random.default_rng(0).random((6, 7, 8)).astype(np.float32))])
    sitk.WriteImage(one, str(tmp_path / "one.nii.gz"))
    image, _, _ = read_image(tmp_path / "one.nii.gz", "dwi")
    assert image.GetDimension() == 3 and image.GetSize() == (8, 7, 6)
    vols = [sitk.GetImageFromArray(np.random.default_rng(i).random((6, 7, 8)).astype(np.float32)) for i in range(3)]
    sitk.WriteImage(sitk.JoinSeries(vols), str(tmp_path / "multi.nii.gz"))
    with pytest.raises(UserError, match="4-D with 3 volumes.*b=1000"):
        read_image(tmp_path / "multi.nii.gz", "dwi")


def test_unreadable_and_missing_files_are_user_errors(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read"):
        read_image(tmp_path / "x.nii.gz", "adc")
    with pytest.raises(UserError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz", "adc")


def test_failure_inside_the_output_block_leaves_nothing(tmp_path):
    out = tmp_path / "deep" / "out"
    with pytest.raises(RuntimeError):
        with AtomicOutput(out, ["report.json"]) as tmp:
            (tmp / "report.json").write_text("{}", encoding="utf-8")
            raise RuntimeError("disk full")
    assert not (tmp_path / "deep").exists()        # even the parents it created are gone


def test_stale_temporary_folders_of_killed_runs_are_removed(tmp_path):
    dead = tmp_path / ".out.partial-999999999-abc"   # no such process
    dead.mkdir()
    (dead / "segmentation.nii.gz").write_bytes(b"half")
    alive = tmp_path / f".out.partial-{os.getppid()}-abc"
    alive.mkdir()
    with AtomicOutput(tmp_path / "out", ["report.json"]) as tmp:
        (tmp / "report.json").write_text("{}", encoding="utf-8")
        assert not dead.exists() and alive.exists()
    assert not (tmp_path / "out").exists()   # no commit → nothing
    alive.rmdir()


@pytest.mark.slow
def test_overwrite_replaces_our_results_and_keeps_other_files(tmp_path):
    paths = write_case(tmp_path / "in")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "report.json").write_text("{}", encoding="utf-8")
    (out / "components").mkdir()
    (out / "components" / "old.nrrd").write_text("old", encoding="utf-8")
    settings = SegmentSettings(task="stroke", models=[model], device="cpu", overview=False)
    with pytest.raises(UserError, match="--overwrite"):
        segment_case(paths, out, settings)
    segment_case(paths, out, settings.but(overwrite=True))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["task"] == "stroke"
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"   # not ours: kept
    # an earlier run's components/ is not in this report, so it must not stay next to it
    assert not (out / "components").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.slow
def test_overwrite_leaves_only_the_outputs_the_new_report_lists(tmp_path):
    """Run 1 writes probabilities in NRRD; run 2 (--overwrite, NIfTI, no probabilities) must not leave
    run 1's files behind: the folder holds exactly the new report's outputs plus the user's files."""
    paths = write_case(tmp_path / "in")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    first = SegmentSettings(task="stroke", models=[model], device="cpu", overview=False, probabilities=True,
                            format="nrrd")
    segment_case(paths, out, first)
    assert (out / "probabilities.nrrd").is_file() and (out / "segmentation.nrrd").is_file()
    second = SegmentSettings(task="stroke", models=[model], device="cpu", overview=False, overwrite=True)
    outputs = segment_case(paths, out, second).outputs
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    listed = set(report["outputs"].values())
    assert {p.name for p in out.iterdir()} == listed | {"notes.txt"}
    assert "probabilities" not in outputs and (out / "segmentation.nii.gz").is_file()


def test_commit_moves_away_stale_claimed_entries_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("report.json", "probabilities.nii.gz", "keep.txt"):
        (out / name).write_text("old", encoding="utf-8")
    (out / "components").mkdir()
    (out / "components" / "encoder1.nii.gz").write_text("old", encoding="utf-8")
    claims = ["report.json", "probabilities.nii.gz", "components", "segmentation.nii.gz"]
    with AtomicOutput(out, claims, overwrite=True) as tmp:
        (tmp / "report.json").write_text("new", encoding="utf-8")
        (tmp / "segmentation.nii.gz").write_text("new", encoding="utf-8")
        assert (out / "probabilities.nii.gz").exists()    # nothing changes before commit
    # not committed: the old results are untouched
    assert (out / "report.json").read_text(encoding="utf-8") == "old" and (out / "components").is_dir()
    out_obj = AtomicOutput(out, claims, overwrite=True)
    with out_obj as tmp:
        (tmp / "report.json").write_text("new", encoding="utf-8")
        (tmp / "segmentation.nii.gz").write_text("new", encoding="utf-8")
        out_obj.commit()
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "report.json", "segmentation.nii.gz"]
    assert (out / "report.json").read_text(encoding="utf-8") == "new"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
