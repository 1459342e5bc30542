"""Phantom generator: determinism, per-task label/contrast invariants, layouts, sample data."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.phantoms import CHANNELS, case_files, generate_case, write_dataset
from LesionFactorizerLib.phantoms.samples import load_manifest, sample_case, sample_data_dir

pytestmark = pytest.mark.slow

pytest.importorskip("nilearn")


def _normal_parenchyma(case, lesion: np.ndarray, channel: str) -> np.ndarray:
    """Brain voxels well away from the lesion (3 voxels), excluding the outer boundary voxels."""
    brain = ndi.binary_erosion(case.images[channel] > 0, iterations=2)
    return brain & ~ndi.binary_dilation(lesion, iterations=3)


@pytest.mark.parametrize("task", ["tumor", "stroke", "ms-new"])
def test_same_seed_gives_identical_case_and_other_seed_differs(task):
    a = generate_case(task, 11, 2, spacing=4)
    b = generate_case(task, 11, 2, spacing=4)
    c = generate_case(task, 12, 2, spacing=4)
    assert a.images.keys() == b.images.keys() == set(CHANNELS[task])
    for name in a.images:
        assert a.images[name].dtype == np.int16
        np.testing.assert_array_equal(a.images[name], b.images[name])
        assert not np.array_equal(a.images[name], c.images[name])
    np.testing.assert_array_equal(a.label, b.label)
    assert a.geometry == b.geometry


def test_spacing_and_size_set_the_grid_but_not_the_patient():
    case = generate_case("stroke", 8, 0, spacing=(3.0, 3.0, 5.0), size=(50, 60, 30))
    assert case.label.shape == (30, 60, 50)  # arrays are z, y, x
    assert case.geometry["spacing"] == (3.0, 3.0, 5.0)
    fine = generate_case("stroke", 8, 0, spacing=2)
    assert fine.meta["lesions"] == case.meta["lesions"]
    # Same infarct volume on both grids (within partial-volume error).
    assert abs(fine.meta["volume_ml"] - case.meta["volume_ml"]) < 0.25 * fine.meta["volume_ml"]


@pytest.mark.parametrize("seed", [0, 4])  # necrotic; solid
def test_tumor_regions_nest_and_show_their_contrasts(seed):
    case = generate_case("tumor", seed, 0, spacing=2)
    lab = case.label
    assert set(np.unique(lab)) <= {0, 1, 2, 3}
    et, tc, wt = lab == 3, np.isin(lab, (1, 3)), lab > 0
    assert tc.sum() > 0 and wt.sum() > tc.sum()
    # Labels only inside the skull-stripped brain.
    assert not (wt & (case.images["t1"] == 0)).any()
    normal = _normal_parenchyma(case, wt, "t1ce")
    # The core is wrapped in oedema; where its border is not, it abuts CSF (T2-bright), as real
    # tumours touch ventricles and sulci.
    ring = ndi.binary_dilation(tc) & ~tc & (case.images["flair"] > 0)
    assert wt[ring].mean() > 0.8
    bare = ring & ~wt
    t2 = case.images["t2"].astype(float)
    if bare.sum() >= 5:
        assert np.median(t2[bare]) > 1.1 * np.median(t2[normal])
    t1ce, flair = case.images["t1ce"].astype(float), case.images["flair"].astype(float)
    if et.sum() >= 5:
        assert np.median(t1ce[et]) > 1.2 * np.median(t1ce[normal])
        ncr = lab == 1
        if ncr.sum() >= 5:
            assert np.median(t1ce[et]) > 1.5 * np.median(t1ce[ncr])
    ed = lab == 2
    assert np.median(flair[ed]) > 1.15 * np.median(flair[normal])


@pytest.mark.parametrize("seed", [4, 8, 9])  # lacunar; cortical MCA; cortical ACA + brainstem lacune
def test_stroke_is_bright_on_dwi_and_dark_on_adc(seed):
    case = generate_case("stroke", seed, 0, spacing=2)
    lesion = case.label == 1
    assert lesion.sum() >= 8
    adc = case.images["adc"].astype(float)
    dwi = case.images["dwi"].astype(float)
    normal = _normal_parenchyma(case, lesion, "dwi") & (adc > 400) & (adc < 1200)  # parenchyma, not CSF
    assert np.median(dwi[lesion]) > 1.4 * np.median(dwi[normal])
    assert np.median(adc[lesion]) < 0.75 * np.median(adc[normal])
    assert 200 < np.median(adc[normal]) < 1100  # ADC in 10^-6 mm²/s
    # Contralateral check: the lesion's mirror across the midline is normal on DWI.
    mirror = lesion[:, :, ::-1] & ~lesion & normal
    if mirror.sum() >= 8:
        assert np.median(dwi[lesion]) > 1.3 * np.median(dwi[mirror])


def test_new_ms_lesions_appear_only_at_follow_up():
    with_new = without_new = 0
    for seed in (0, 1, 2, 5):
        case = generate_case("ms-new", seed, 0, spacing=2)
        new = case.label == 1
        if case.meta["new_lesions"] == 0:
            assert not new.any()
            without_new += 1
            continue
        if new.sum() < 3:
            continue
        base = case.images["flair_baseline"].astype(float)
        follow = case.images["flair_followup"].astype(float)
        normal = _normal_parenchyma(case, new, "flair_baseline")
        # Normalise by each scan's own normal tissue: the time points differ in gain and bias.
        b = np.median(base[new]) / np.median(base[normal])
        f = np.median(follow[new]) / np.median(follow[normal])
        assert b < 1.1  # at baseline the new lesion's place looks like normal tissue
        assert f > 1.1 and f > b + 0.12  # 2 mm voxels: partial volume dims small lesions
        with_new += 1
    assert with_new >= 2 and without_new >= 1  # about a third of MSSEG-2 cases have no new lesion


def _read(path):
    img = sitk.ReadImage(path)
    return img, sitk.GetArrayFromImage(img)


@pytest.mark.parametrize("task", ["tumor", "stroke", "ms-new"])
def test_dataset_is_written_in_the_public_layout(tmp_path, task):
    out = tmp_path / "ds"
    write_dataset(task, 2, str(out), seed=3, spacing=4)
    expected = {
        "tumor": ["BraTS2021_00000/BraTS2021_00000_flair.nii.gz", "BraTS2021_00000/BraTS2021_00000_t1.nii.gz",
                  "BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz", "BraTS2021_00000/BraTS2021_00000_t2.nii.gz",
                  "BraTS2021_00000/BraTS2021_00000_seg.nii.gz", "BraTS2021_00001/BraTS2021_00001_seg.nii.gz"],
        "stroke": ["rawdata/sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_dwi.nii.gz",
                   "rawdata/sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_adc.nii.gz",
                   "rawdata/sub-strokecase0001/ses-0001/anat/sub-strokecase0001_ses-0001_FLAIR.nii.gz",
                   "derivatives/sub-strokecase0001/ses-0001/sub-strokecase0001_ses-0001_msk.nii.gz",
                   "derivatives/sub-strokecase0002/ses-0001/sub-strokecase0002_ses-0001_msk.nii.gz",
                   "rawdata/dataset_description.json"],
        "ms-new": ["001/flair_time01_on_middle_space.nii.gz", "001/flair_time02_on_middle_space.nii.gz",
                   "001/ground_truth.nii.gz", "002/ground_truth.nii.gz"],
    }[task]
    for rel in expected:
        assert (out / rel).is_file(), rel
    assert not [p for p in os.listdir(out) if p.startswith(".phantom-staging")]
    files = case_files(task, 0)
    label_img, label = _read(str(out / files["label"]))
    assert label.dtype == np.uint8
    allowed = {0, 1, 2, 4} if task == "tumor" else {0, 1}
    assert set(np.unique(label)) <= allowed
    # Written labels match the in-memory case (BraTS stores ET as 4).
    case = generate_case(task, 3, 0, spacing=4)
    ref = case.label.copy()
    if task == "tumor":
        ref[ref == 3] = 4
    np.testing.assert_array_equal(label, ref)
    for key, rel in files.items():
        img, arr = _read(str(out / rel))
        if key != "label":
            assert arr.dtype == np.int16
            np.testing.assert_array_equal(arr, case.images[key])
        assert img.GetSize() == label_img.GetSize()
        assert np.allclose(img.GetOrigin(), label_img.GetOrigin()) and img.GetSpacing() == (4.0, 4.0, 4.0)
    manifest = json.loads((out / "phantom_manifest.json").read_text(encoding="utf-8"))
    assert manifest["task"] == task and set(manifest["cases"]) == {"0", "1"}


def test_existing_cases_are_kept_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    write_dataset("ms-new", 1, str(out), seed=1, spacing=4)
    gt = out / "001" / "ground_truth.nii.gz"
    before = gt.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        write_dataset("ms-new", 1, str(out), seed=2, spacing=4)
    assert gt.read_bytes() == before
    write_dataset("ms-new", 1, str(out), seed=2, spacing=4, overwrite=True)
    assert sorted(os.listdir(out)) == ["001", "phantom_manifest.json"]


def test_failure_midway_leaves_no_partial_cases(tmp_path):
    out = tmp_path / "ds"

    def stop_after_first(index, record):
        if index == 1:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dataset("tumor", 3, str(out), seed=0, spacing=4, on_case=stop_after_first)
    assert os.listdir(out) == []


def test_bundled_samples_are_small_verified_int16_cases():
    manifest = load_manifest()
    assert set(manifest["cases"]) == {"tumor", "stroke", "ms-new"}
    for task, entry in manifest["cases"].items():
        paths = sample_case(task)  # verifies SHA-256
        assert set(paths["inputs"]) == set(CHANNELS[task])
        ref_img, label = _read(paths["label"])
        assert label.dtype == np.uint8 and label.any()
        assert set(np.unique(label)) <= {int(k) for k in paths["labels"]} | {0}
        for path in paths["inputs"].values():
            assert os.path.getsize(path) < 4 * 2**20
            img, arr = _read(path)
            assert arr.dtype == np.int16 and arr.shape == label.shape
            assert np.allclose(img.GetOrigin(), ref_img.GetOrigin())
            # Cropped to the brain: every face of the box is within a few voxels of brain.
            nz = np.argwhere(arr > 0)
            assert (nz.min(0) <= 3).all() and (np.array(arr.shape) - 1 - nz.max(0) <= 3).all()


def test_corrupted_sample_is_reported(tmp_path):
    copy = tmp_path / "SampleData"
    shutil.copytree(sample_data_dir(), copy)
    path = copy / "stroke_label.nii.gz"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupted"):
        sample_case("stroke", folder=str(copy))
    assert sample_case("tumor", folder=str(copy))["label"].endswith("tumor_label.nii.gz")
