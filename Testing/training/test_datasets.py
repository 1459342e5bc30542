"""Dataset adapters, explicit label conversion, k-fold splits and preprocessing, on tiny synthetic
volumes written in each public layout (real NIfTI files read back with SimpleITK)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LesionFactorizerLib.datasets import Case, ImageRef, convert_labels, discover
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.training import folds, synthetic
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
    d = load_case(c, ["flair", "t1", "t1ce", "t2"], task="tumor")
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
    # without a label map the datalist means the task's own values: BraTS-2021's 4 is refused, naming the file
    for plain in (discover("datalist", tmp_path / "list.json", "tumor"),
                  discover("datalist", tmp_path / "list.json", "tumor", label_map={1: 1, 2: 2, 3: 3})):
        with pytest.raises(UserError, match=r"_seg\.nii\.gz: label value\(s\) \[4\]"):
            load_case(plain[0], ["flair", "t1", "t1ce", "t2"], task="tumor")
    with pytest.raises(UserError, match="does not have"):   # a map onto values the task lacks
        discover("datalist", tmp_path / "list.json", "stroke", label_map={1: 2})
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
    with pytest.raises(UserError):   # fractional values are not labels
        convert_labels(np.array([0.0, 1.5]), {1: 1})
    with pytest.raises(ValueError):  # an empty map would pass values through unchecked: refused
        convert_labels(np.array([0, 4]), {})


@pytest.mark.parametrize("n", [5, 12, 23])
@pytest.mark.slow
def test_folds_match_monai_partition_dataset(n):
    partition_dataset = pytest.importorskip("monai.data").partition_dataset   # MONAI: a training extra
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
    native = load_case(case, ["dwi", "adc"], task="stroke")
    fine = load_case(case, ["dwi", "adc"], spacing=[1.0, 1.0, 1.0], task="stroke")
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
    np.testing.assert_allclose(load_case(moved, ["dwi", "adc"], task="stroke")["image"], img, atol=1e-4)


def test_disk_cache_equals_memory_and_is_reused(tmp_path):
    from LesionFactorizerLib.training.data import CaseStore

    root = synthetic.make_msseg2(tmp_path / "m", n=2, shape=SHAPE, seed=7)
    cases = discover("msseg2", root, "ms-new")
    names = ["flair_baseline", "flair_followup"]
    mem = CaseStore(cases, names, None, "memory", task="ms-new")
    disk = CaseStore(cases, names, None, "disk", tmp_path / "cache", task="ms-new")
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 4
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(disk.get(i)["image"]), mem.get(i)["image"])
        np.testing.assert_array_equal(np.asarray(disk.get(i)["label"]), mem.get(i)["label"])
    stamp = [f.stat().st_mtime_ns for f in files]
    CaseStore(cases, names, None, "disk", tmp_path / "cache", task="ms-new")   # second run: no rewrite
    assert [f.stat().st_mtime_ns for f in files] == stamp
    assert np.load(files[0], allow_pickle=False).dtype in (np.float32, np.uint8)
    # another label conversion of the same files is another cache entry, not the stale one
    remapped = [Case(c.id, c.images, c.label, {1: 0}) for c in cases]
    other = CaseStore(remapped, names, None, "disk", tmp_path / "cache", task="ms-new")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 8
    lesions = [i for i, c in enumerate(cases) if np.asarray(disk.get(i)["label"]).any()]
    assert lesions and not any(np.asarray(other.get(i)["label"]).any() for i in lesions)


def test_one_datalist_reader_accepts_the_batch_and_the_training_spellings(tmp_path):
    from LesionFactorizerLib.datalist import read_datalist

    root = synthetic.make_msseg2(tmp_path / "m", n=2, shape=SHAPE, seed=8)
    cases = discover("msseg2", root, "ms-new")
    rel = {c.id: {n: str(Path(r.path).relative_to(tmp_path)) for n, r in c.images.items()} for c in cases}
    labels = {c.id: str(Path(c.label).relative_to(tmp_path)) for c in cases}
    # batch's JSON spelling: case_id + an "inputs" object, under "cases"
    (tmp_path / "batch.json").write_text(json.dumps({"cases": [
        {"case_id": cid, "inputs": files, "label": labels[cid]} for cid, files in rel.items()]}), encoding="utf-8")
    # batch's CSV spelling with extra cohort columns (age) and a fold column; TSV too
    for name, delim in (("batch.csv", ","), ("batch.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["case_id", "flair_baseline", "flair_followup", "label", "fold", "age"],
                               delimiter=delim)
            w.writeheader()
            for i, (cid, files) in enumerate(rel.items()):
                w.writerow({"case_id": cid, **files, "label": labels[cid], "fold": i, "age": 40 + i})
    for name in ("batch.json", "batch.csv", "batch.tsv"):
        got = discover("datalist", tmp_path / name, "ms-new")   # training reads what batch reads
        assert [c.id for c in got] == [c.id for c in cases]
        for a, b in zip(got, cases):
            want = {n: str(Path(r.path).resolve()) for n, r in b.images.items()}
            assert {n: r.path for n, r in a.images.items()} == want
            assert Path(a.label).resolve() == Path(b.label).resolve()
        entries = read_datalist(tmp_path / name, ["flair_baseline", "flair_followup"])
        if name != "batch.json":
            assert [e.fold for e in entries] == [0, 1] and entries[1].extra == {"age": "41"}
    # ids name output folders and cache files: path separators and duplicates are refused
    for bad_id, message in (("../x", "folder name"), ("a/b", "folder name")):
        (tmp_path / "bad.json").write_text(json.dumps([{"case_id": bad_id, **rel[cases[0].id]}]), encoding="utf-8")
        with pytest.raises(UserError, match=message):
            read_datalist(tmp_path / "bad.json", ["flair_baseline", "flair_followup"])
    (tmp_path / "dup.json").write_text(json.dumps([{"id": "a", **rel[cases[0].id]}] * 2), encoding="utf-8")
    with pytest.raises(UserError, match="duplicate"):
        discover("datalist", tmp_path / "dup.json", "ms-new", require_labels=False)
    (tmp_path / "typo.json").write_text(json.dumps([{"id": "a", "inputs": {"flair_basline": "x.nii.gz"}}]),
                                        encoding="utf-8")
    with pytest.raises(UserError, match="unknown input name.*flair_basline"):
        read_datalist(tmp_path / "typo.json", ["flair_baseline", "flair_followup"])


def _write_like(array, like: sitk.Image, path, origin_shift=(0.0, 0.0, 0.0), spacing=None):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing or like.GetSpacing())
    img.SetOrigin(tuple(o + s for o, s in zip(like.GetOrigin(), origin_shift)))
    img.SetDirection(like.GetDirection())
    sitk.WriteImage(img, str(path))
    return str(path)


def test_training_uses_the_task_reference_grid_and_the_inference_preprocessing(tmp_path):
    from LesionFactorizerLib.pipeline.geometry import Geometry
    from LesionFactorizerLib.pipeline.io import align_to_reference, load_inputs
    from LesionFactorizerLib.pipeline.preprocessing import prepare
    from LesionFactorizerLib.core.tasks import get_task

    root = synthetic.make_msseg2(tmp_path / "m", n=1, shape=SHAPE, seed=9)
    case = discover("msseg2", root, "ms-new")[0]
    follow = sitk.ReadImage(case.images["flair_followup"].path)
    base_arr = sitk.GetArrayFromImage(sitk.ReadImage(case.images["flair_baseline"].path))
    # the baseline lies on a grid shifted by 1.5 voxels: one of the two inputs must be interpolated
    shifted = _write_like(base_arr, follow, tmp_path / "base_shifted.nii.gz", origin_shift=(1.5, 0.0, 0.0))
    moved = Case(case.id, {"flair_baseline": ImageRef(shifted), "flair_followup": case.images["flair_followup"]},
                 case.label, case.label_map)
    names = ["flair_baseline", "flair_followup"]
    assert get_task("ms-new").reference == "flair_followup"
    d = load_case(moved, names, task="ms-new")
    # the follow-up (the task's reference, where inference writes its output) is not interpolated:
    # its channel is exactly its own voxels, cropped and z-scored
    box = (slice(None),) + foreground_box_of(d, follow, shifted)
    want = sitk.GetArrayFromImage(follow).astype(np.float32)[box[1:]]
    nz = want != 0
    want[nz] = (want[nz] - want[nz].mean(dtype=np.float64)) / want[nz].std(dtype=np.float64)
    np.testing.assert_allclose(d["image"][1], want, atol=1e-5)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(case.label))[box[1:]]
    np.testing.assert_array_equal(d["label"][0], lab)
    # at another spacing, the network's training input equals what inference feeds it (same grid,
    # edge-aligned resampling, normalisation) — no half-voxel offset between the two
    spacing = [2.0, 1.5, 1.25]
    d2 = load_case(moved, names, spacing=spacing, task="ms-new")
    inputs = load_inputs({"flair_baseline": shifted, "flair_followup": case.images["flair_followup"].path}, names)
    align_to_reference(inputs, inputs[1], [])
    prep = prepare([i.image for i in inputs], inputs[1].geometry, spacing, 1)
    np.testing.assert_allclose(d2["image"], prep.array, atol=1e-5)
    assert prep.model_grid == Geometry.from_image(follow).with_spacing(spacing)
    assert d2["label"].shape[1:] == d2["image"].shape[1:] and d2["spacing"] == tuple(spacing)


def foreground_box_of(d, follow, shifted_path):
    """(z, y, x) slices of the inference pipeline's foreground box of the two aligned inputs."""
    from LesionFactorizerLib.pipeline.preprocessing import foreground_box

    base = sitk.Resample(sitk.ReadImage(shifted_path, sitk.sitkFloat32), follow, sitk.Transform(), sitk.sitkLinear, 0.0)
    start, stop = foreground_box([sitk.GetArrayFromImage(base), sitk.GetArrayFromImage(follow)])
    return tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1]))
