"""Task definitions: names, inputs, labels, terminology and file-name matching."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import REPO

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.tasks import TASKS, file_stem, get_task, image_suffix, is_image_file, match_inputs


@pytest.mark.slow
def test_tasks_and_model_metadata_import_without_torch():
    code = ("import sys; import LesionFactorizerLib.core.tasks, LesionFactorizerLib.modelfile, "
            "LesionFactorizerLib.pipeline.progress, LesionFactorizerLib.core.speed_presets; "
            "bad = [m for m in ('torch', 'monai', 'SimpleITK') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, encoding="utf-8")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_task_inputs_and_labels_follow_the_design():
    assert list(TASKS) == ["tumor", "stroke", "ms-new"]
    assert get_task("tumor").input_names == ["flair", "t1", "t1ce", "t2"]
    assert get_task("stroke").required_inputs == ["dwi", "adc"] and get_task("stroke").input("flair").optional
    assert get_task("ms-new").input_names == ["flair_baseline", "flair_followup"]
    assert [(lb.value, lb.name) for lb in get_task("tumor").labels] == [(1, "NCR"), (2, "ED"), (3, "ET")]
    tumor = get_task("tumor")
    regions = {r.name: set(r.labels) for r in tumor.regions}
    assert regions["ET"] < regions["TC"] < regions["WT"]   # nested, ET ⊂ TC ⊂ WT
    assert get_task("ms-new").postprocessing.min_lesion_mm3 == 3.0
    assert get_task("ms-new").postprocessing.connectivity == 18


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(UserError, match="tumor, stroke, ms-new"):
        get_task("liver")


@pytest.mark.parametrize("task", list(TASKS))
def test_labels_carry_distinct_colours_and_slicer_terminology(task):
    labels = TASKS[task].labels
    assert len({lb.color for lb in labels}) == len(labels)
    for lb in labels:
        assert all(0 <= c <= 255 for c in lb.color)
        parts = lb.terminology_entry().split("~")
        assert len(parts) == 7                      # context~category~type~modifier~anatomicContext~region~modifier
        for coded in (parts[1], parts[2], parts[5]):
            scheme, value, meaning = coded.split("^")
            assert scheme == "SCT" and re.fullmatch(r"\d{6,18}", value) and meaning
    assert len({lb.type.value for lb in labels}) == len(labels)


def test_file_stem_strips_image_extensions():
    assert file_stem("/data/Case1_T1ce.nii.gz") == "case1_t1ce"
    assert file_stem("x/DWI.nrrd") == "dwi"
    assert file_stem("/dicom/FLAIR_series/") == "flair_series"
    assert file_stem("ref/case7.seg.nrrd") == "case7"
    assert file_stem("IM_0001.dcm") == "im_0001"


def test_one_list_of_image_file_endings():
    assert [image_suffix(n) for n in ("a.NII.GZ", "b.nii", "c.seg.nrrd", "d.nrrd", "e.nhdr", "f.mha", "g.mhd")] == \
        [".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd"]
    for name in ("notes.txt", "list.csv", "report.json", "archive.tar.gz", "slice.dcm", ".nii.gz", "nii"):
        assert not is_image_file(name), name


@pytest.mark.parametrize("names,expected", [
    (["BraTS20_001_flair.nii.gz", "BraTS20_001_t1.nii.gz", "BraTS20_001_t1ce.nii.gz", "BraTS20_001_t2.nii.gz",
      "BraTS20_001_seg.nii.gz"],
     {"flair": "BraTS20_001_flair.nii.gz", "t1": "BraTS20_001_t1.nii.gz", "t1ce": "BraTS20_001_t1ce.nii.gz",
      "t2": "BraTS20_001_t2.nii.gz"}),
    (["BraTS-GLI-00000-000-t1n.nii.gz", "BraTS-GLI-00000-000-t1c.nii.gz", "BraTS-GLI-00000-000-t2w.nii.gz",
      "BraTS-GLI-00000-000-t2f.nii.gz"],
     {"t1": "BraTS-GLI-00000-000-t1n.nii.gz", "t1ce": "BraTS-GLI-00000-000-t1c.nii.gz",
      "t2": "BraTS-GLI-00000-000-t2w.nii.gz", "flair": "BraTS-GLI-00000-000-t2f.nii.gz"}),
    (["p1_T2_FLAIR.nrrd", "p1_T1_GD.nrrd", "p1_MPRAGE.nrrd", "p1_T2.nrrd"],
     {"flair": "p1_T2_FLAIR.nrrd", "t1ce": "p1_T1_GD.nrrd", "t1": "p1_MPRAGE.nrrd", "t2": "p1_T2.nrrd"}),
])
def test_tumor_inputs_are_recognised_by_name(names, expected):
    assert match_inputs(names, "tumor") == expected


def test_stroke_and_ms_inputs_are_recognised_by_name():
    isles = ["sub-strokecase0001_ses-0001_dwi.nii.gz", "sub-strokecase0001_ses-0001_adc.nii.gz",
             "sub-strokecase0001_ses-0001_FLAIR.nii.gz"]
    assert get_task("stroke").match_inputs(isles) == dict(zip(["dwi", "adc", "flair"], isles))
    msseg = ["flair_time01_on_middle_space.nii.gz", "flair_time02_on_middle_space.nii.gz"]
    assert match_inputs(msseg, "ms-new") == {"flair_baseline": msseg[0], "flair_followup": msseg[1]}


def test_ambiguous_names_are_left_unassigned_rather_than_guessed():
    # two files look like ADC: neither is assigned; the DWI is unaffected
    got = match_inputs(["case_dwi.nii.gz", "case_adc.nii.gz", "case_adc_copy.nii.gz"], "stroke")
    assert got == {"dwi": "case_dwi.nii.gz"}
    # a file that matches no input is simply not used
    assert match_inputs(["notes.nii.gz"], "tumor") == {}
