"""Dataset adapters, explicit label conversion, k-fold splits and preprocessing, on tiny synthetic
volumes written in each public layout (real NIfTI files read back with SimpleITK)."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from monai.data import partition_dataset

from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.training import folds, synthetic
from LesionFactorizerLib.training.datasets import Case, ImageRef, convert_labels, discover
from LesionFactorizerLib.training.preprocess import load_case

SHAPE = (20, 18, 16)


def _task_labels(seed, n, maker):
    """The task labels the synthetic generator drew (same RNG stream as the writer)."""
    rng = np.random.default_rng(seed)
    return [maker(rng, SHAPE)[1] for _ in range(n)]


@pytest.mark.parametrize("version", [2021, 2023])
def test_brats_layouts_and_label_conversion(tmp_path, version):
    root = synthetic.make_brats(tmp_path / "brats", n=2, version=version, shape=SHAPE, seed=1)
    cases = discover("brats", root, "tumor")
    assert [len(c.images) for c in cases] == [4, 4]
    raw = sitk.GetArrayFromImage(sitk.ReadImage(cases[0].label))
    assert (4 in raw) == (version == 2021) and (3 in raw) == (version == 2023)
    expected = _task_labels(1, 2, synthetic.tumor_case)
    for case, want in zip(cases, expected):
        got = convert_labels(sitk.GetArrayFromImage(sitk.ReadImage(case.label)), case.label_map)
        np.testing.assert_array_equal(got, want)   # 1 NCR, 2 ED, 3 ET whatever the release
    assert set(np.unique(expected[0])) == {0, 1, 2, 3}


def test_msd_task01_four_d_channels_and_labels(tmp_path):
    root = synthetic.make_msd_task01(tmp_path / "Task01", n=2, shape=SHAPE, seed=2)
    cases = discover("msd-task01", root, "tumor")
    c = cases[0]
    assert {n: r.channel for n, r in c.images.items()} == {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}
    raw = sitk.GetArrayFromImage(sitk.ReadImage(c.label))
    got = convert_labels(raw, c.label_map)
    # MSD: 1 edema → 2, 2 NCR → 1, 3 ET → 3
    assert np.array_equal(got == 2, raw == 1) and np.array_equal(got == 1, raw == 2) and np.array_equal(got == 3, raw == 3)
    np.testing.assert_array_equal(got, _task_labels(2, 1, synthetic.tumor_case)[0])
    d = load_case(c, ["flair", "t1", "t1ce", "t2"])
    assert d["image"].shape[0] == 4 and d["label"].shape[1:] == d["image"].shape[1:]
    # channel 2 (T1Gd) is brightest in the enhancing tumour: the right volume was extracted
    et = d["label"][0] == 3
    assert d["image"][2][et].mean() > d["image"][1][et].mean() + 1


def test_isles22_and_msseg2_layouts(tmp_path):
    iroot = synthetic.make_isles22(tmp_path / "isles", n=2, shape=SHAPE, seed=3)
    cases = discover("isles22", iroot, "stroke")
    assert cases[0].id == "sub-strokecase0001" and set(cases[0].images) == {"dwi", "adc", "flair"}
    lab = sitk.ReadImage(cases[0].label)
    assert lab.GetSpacing() == (2.0, 2.0, 2.0)
    mroot = synthetic.make_msseg2(tmp_path / "msseg2", n=4, shape=SHAPE, seed=4)
    mcases = discover("msseg2", mroot, "ms-new")
    assert set(mcases[0].images) == {"flair_baseline", "flair_followup"}
    empty = [c for c in mcases if not sitk.GetArrayFromImage(sitk.ReadImage(c.label)).any()]
    assert len(empty) == 1   # MSSEG-2 has cases without new lesions; so does the generator
    with pytest.raises(UserError, match="does not provide"):
        discover("msseg2", mroot, "tumor")


def test_datalists_json_csv_with_label_map_and_folds(tmp_path):
    root = synthetic.make_brats(tmp_path / "b", n=3, shape=SHAPE, seed=5)
    cases = discover("brats", root, "tumor")
    entries = [{"id": c.id, **{n: r.path for n, r in c.images.items()}, "label": c.label, "fold": i % 2}
               for i, c in enumerate(cases)]
    (tmp_path / "list.json").write_text(json.dumps({"training": entries}), encoding="utf-8")
    with open(tmp_path / "list.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(entries[0]))
        w.writeheader()
        w.writerows(entries)
    for name in ("list.json", "list.csv"):
        dl = discover("datalist", tmp_path / name, "tumor", label_map={1: 1, 2: 2, 4: 3})
        assert [c.id for c in dl] == [c.id for c in cases] and [c.fold for c in dl] == [0, 1, 0]
        train, val = folds.split(dl, 1)
        assert [c.id for c in val] == [cases[1].id] and len(train) == 2
    # without a label map the raw BraTS-2021 value 4 is refused, naming the file
    plain = discover("datalist", tmp_path / "list.json", "tumor", label_map={1: 1, 2: 2, 3: 3})
    with pytest.raises(UserError, match=r"label value\(s\) \[4\]"):
        load_case(plain[0], ["flair", "t1", "t1ce", "t2"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "flair": "a.nii.gz"}]), encoding="utf-8")
    with pytest.raises(UserError, match="lacks input"):
        discover("datalist", bad, "tumor")


def test_convert_labels_explicit_tables():
    raw = np.array([0, 1, 2, 4, 4, 1])
    np.testing.assert_array_equal(convert_labels(raw, {1: 1, 2: 2, 4: 3}), [0, 1, 2, 3, 3, 1])
    np.testing.assert_array_equal(convert_labels(np.array([0, 1, 2, 3]), {1: 2, 2: 1, 3: 3}), [0, 2, 1, 3])
    np.testing.assert_array_equal(convert_labels(np.array([0, 5, 1]), "binary"), [0, 1, 1])
    with pytest.raises(UserError):
        convert_labels(np.array([0, 3]), {1: 1, 2: 2, 4: 3})


@pytest.mark.parametrize("n", [5, 12, 23])
def test_folds_match_monai_partition_dataset(n):
    items = list(range(n))
    ref = partition_dataset(items, num_partitions=5, shuffle=True, seed=42)
    assert folds.fold_indices(n, 5, 42) == ref
    for k in range(5):
        train, val = folds.split(items, k)
        assert sorted(val) == sorted(ref[k]) and set(train) | set(val) == set(items)
    with pytest.raises(UserError):
        folds.split(items, 5)


def test_preprocess_resamples_crops_and_normalises(tmp_path):
    root = synthetic.make_isles22(tmp_path / "isles", n=1, shape=SHAPE, seed=6)
    case = discover("isles22", root, "stroke")[0]
    native = load_case(case, ["dwi", "adc"])
    fine = load_case(case, ["dwi", "adc"], spacing=[1.0, 1.0, 1.0])
    # 2 mm → 1 mm doubles every axis of the (cropped) grid, up to the crop's rounding
    assert all(abs(f - 2 * n) <= 3 for f, n in zip(fine["image"].shape[1:], native["image"].shape[1:]))
    img = native["image"]
    for ch in img:
        nz = ch[ch != 0]
        assert abs(nz.mean()) < 1e-4 and abs(nz.std() - 1) < 1e-3
    # cropped to the brain: every face of the box touches a non-zero voxel
    fg = np.any(img != 0, axis=0)
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        prof = fg.any(axis=other)
        assert prof[0] and prof[-1]
    assert native["label"].dtype == np.uint8 and set(np.unique(native["label"])) <= {0, 1}
    # an input on another grid is resampled onto the first input's grid (physical space)
    shifted = tmp_path / "adc_shifted.nii.gz"
    img_adc = sitk.ReadImage(case.images["adc"].path)
    img_adc = sitk.Resample(img_adc, [s + 3 for s in img_adc.GetSize()], sitk.Transform(), sitk.sitkLinear,
                            img_adc.GetOrigin(), img_adc.GetSpacing(), img_adc.GetDirection(), 0.0, img_adc.GetPixelID())
    sitk.WriteImage(img_adc, str(shifted))
    moved = Case(case.id, {"dwi": case.images["dwi"], "adc": ImageRef(str(shifted))}, case.label, case.label_map)
    np.testing.assert_allclose(load_case(moved, ["dwi", "adc"])["image"], img, atol=1e-4)


def test_disk_cache_equals_memory_and_is_reused(tmp_path):
    from LesionFactorizerLib.training.data import CaseStore

    root = synthetic.make_msseg2(tmp_path / "m", n=2, shape=SHAPE, seed=7)
    cases = discover("msseg2", root, "ms-new")
    names = ["flair_baseline", "flair_followup"]
    mem = CaseStore(cases, names, None, "memory")
    disk = CaseStore(cases, names, None, "disk", tmp_path / "cache")
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 4
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(disk.get(i)["image"]), mem.get(i)["image"])
        np.testing.assert_array_equal(np.asarray(disk.get(i)["label"]), mem.get(i)["label"])
    stamp = [f.stat().st_mtime_ns for f in files]
    CaseStore(cases, names, None, "disk", tmp_path / "cache")           # second run: no rewrite
    assert [f.stat().st_mtime_ns for f in files] == stamp
    assert np.load(files[0], allow_pickle=False).dtype in (np.float32, np.uint8)
