"""The module's output options decided without Slicer: save formats, DICOM SEG availability, the
worker request, the outputs it accepts back, and the packages those outputs need."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "LesionFactorizer"))

from LesionFactorizerLib.core.settings import FORMATS  # noqa: E402
from LesionFactorizerModuleLib import dependencies, exports, outputs, worker  # noqa: E402


def test_the_format_selector_offers_every_library_format_seg_nrrd_first():
    assert [value for value, _ in exports.SAVE_FORMATS] == ["seg.nrrd", *[f for f in FORMATS if f != "seg.nrrd"]]
    assert all(title for _, title in exports.SAVE_FORMATS)


def test_dicom_seg_is_possible_only_for_a_volume_loaded_from_dicom(tmp_path):
    assert exports.instance_uids(None) == [] and exports.instance_uids("") == []
    assert exports.instance_uids("1.2.3 1.2.4  1.2.5") == ["1.2.3", "1.2.4", "1.2.5"]
    assert "loaded from a DICOM series" in exports.dicom_seg_problem("DWI", [], [])
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.dcm"))
        Path(files[-1]).write_bytes(b"x" * (i + 1))
    assert exports.dicom_seg_problem("DWI", ["a", "b", "c"], files) == ""
    assert "under a transform" in exports.dicom_seg_problem("DWI", ["a", "b", "c"], files, transformed=True)
    assert "1 of the 3 DICOM files" in exports.dicom_seg_problem("DWI", ["a", "b", "c"], files[:2] + [""])
    staged = exports.stage_series(files, tmp_path / "staged")
    assert sorted(p.read_bytes() for p in staged.iterdir()) == [b"x", b"xx", b"xxx"]
    assert all(Path(f).exists() for f in files)   # the database's own files stay


def test_save_folder_checks(tmp_path):
    assert exports.save_folder_problem("") == "" and exports.save_folder_problem(str(tmp_path / "new" / "x")) == ""
    (tmp_path / "file").write_text("x")
    assert "is a file" in exports.save_folder_problem(str(tmp_path / "file"))
    assert not exports.holds_results(str(tmp_path))
    (tmp_path / "report.json").write_text("{}")
    assert exports.holds_results(str(tmp_path))


def test_the_worker_request_carries_format_and_dicom_seg(tmp_path):
    request = worker.SegmentRequest.of(task="stroke", inputs={"dwi": tmp_path / "dwi", "adc": tmp_path / "a.nrrd"},
                                       output_dir=tmp_path / "out", format="seg.nrrd", dicom_seg=True, overwrite=True)
    args = worker.build_segment_command("python", request)
    assert args[args.index("--format") + 1] == "seg.nrrd"
    assert "--dicom-seg" in args and "--overwrite" in args
    assert "--dicom-seg" not in worker.build_segment_command("python", worker.SegmentRequest.of(
        task="stroke", inputs={"dwi": "d", "adc": "a"}, output_dir="o"))
    with pytest.raises(ValueError, match="unknown format"):
        worker.SegmentRequest.of(task="stroke", inputs={"dwi": "d"}, output_dir="o", format="dcm").validate()


def test_the_dicom_seg_output_is_accepted_back(tmp_path):
    for name in ("segmentation.seg.nrrd", "report.json", "segmentation.dcm"):
        (tmp_path / name).write_text("x")
    found = outputs.find_outputs(tmp_path, {"segmentation": str(tmp_path / "segmentation.seg.nrrd"),
                                            "report": str(tmp_path / "report.json"),
                                            "dicom_seg": str(tmp_path / "segmentation.dcm")})
    assert found.dicom_seg == tmp_path / "segmentation.dcm"
    assert outputs.find_outputs(tmp_path, {"segmentation": "segmentation.seg.nrrd", "report": "report.json"}
                                ).dicom_seg is None


def test_outputs_install_their_extras_packages():
    """seg.nrrd and DICOM SEG install the packages of the library's extras "slicer" and "dicom",
    capped below the next major version; pydicom, which Slicer bundles, is never replaced."""
    from LesionFactorizerLib.core.requirements import EXTRAS

    assert {d.name for d in dependencies.required("nrrd")} == {d.name for d in dependencies.DEPENDENCIES}
    by_name = {d.name: d for d in dependencies.required("seg.nrrd", dicom_seg=True)}
    assert set(by_name) - {d.name for d in dependencies.DEPENDENCIES} == {"slicerio", "highdicom", "pydicom"}
    assert by_name["slicerio"].requirement == EXTRAS["slicer"][0] + ",<2"
    assert by_name["highdicom"].requirement == "highdicom>=0.23,<1" and "highdicom>=0.23" in EXTRAS["dicom"]
    assert by_name["pydicom"].bundled_with_slicer and "<" not in by_name["pydicom"].requirement
