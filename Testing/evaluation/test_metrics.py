"""Evaluation metrics, cross-checked against independent implementations (MONAI, medpy,
SimpleITK) on random and edge-case masks, plus the MSSEG-2 detection rules on hand-built cases."""

import json
import math

import numpy as np
import pytest
from helpers import main_in_process
import SimpleITK as sitk
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from LesionFactorizerLib.evaluation import detect_lesions, dice, hausdorff95, label_lesions, surface_distances
from LesionFactorizerLib.evaluation.cohort import evaluate_arrays, summarize, wilcoxon_compare


def _blobs(rng, shape=(24, 20, 18), n=3):
    """Random union of ellipsoids — lesion-like masks with irregular surfaces."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = [rng.uniform(3, s - 3) for s in shape]
        r = rng.uniform(1.5, 5, size=3)
        m |= ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
    return m


def _monai(metric, pred, ref, **kw):
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    return float(metric(p, r, **kw).squeeze())


@pytest.mark.parametrize("seed", range(6))
def test_dice_and_hd95_match_monai_and_medpy_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    pred, ref = _blobs(rng), _blobs(rng)
    if seed % 2:  # overlapping pair: perturb the reference a little
        pred = ref.copy()
        pred[tuple(rng.integers(0, s, 40) for s in ref.shape)] ^= True
    spacing = (1.0, 0.8, 1.7) if seed % 3 else (1.0, 1.0, 1.0)
    assert dice(pred, ref) == pytest.approx(
        _monai(DiceMetric(include_background=True), pred, ref), abs=1e-6)
    assert dice(pred, ref) == pytest.approx(medpy_binary.dc(pred, ref), abs=1e-12)
    hd_monai = HausdorffDistanceMetric(include_background=True, percentile=95)
    assert hausdorff95(pred, ref, spacing) == pytest.approx(
        _monai(hd_monai, pred, ref, spacing=list(spacing)), rel=1e-5, abs=1e-5)
    # full Hausdorff (percentile 100) against medpy's independent surface code
    assert hausdorff95(pred, ref, spacing, percentile=100) == pytest.approx(
        medpy_binary.hd(pred, ref, voxelspacing=spacing), rel=1e-6)
    # medpy's hd95 is the percentile of the *pooled* distances: same surface distances
    d1, d2 = surface_distances(pred, ref, spacing)
    assert np.percentile(np.hstack([d1, d2]), 95) == pytest.approx(
        medpy_binary.hd95(pred, ref, voxelspacing=spacing), rel=1e-6)


def test_empty_mask_conventions():
    z = np.zeros((8, 8, 8), bool)
    one = z.copy()
    one[2:4, 2:4, 2:4] = True
    assert dice(z, z) == 1.0 and dice(one, z) == 0.0 and dice(one, one) == 1.0
    assert hausdorff95(z, z) == 0.0
    assert math.isnan(hausdorff95(one, z)) and math.isnan(hausdorff95(z, one))
    assert hausdorff95(one, z, (2, 1, 1), empty_value="diagonal") == pytest.approx(math.sqrt(16**2 + 64 + 64))
    assert hausdorff95(one, one) == 0.0
    # a mask touching the image border: its border voxels are surface voxels (MONAI agrees)
    edge = z.copy()
    edge[:, :, :3] = True
    shifted = z.copy()
    shifted[:, :, :5] = True
    assert hausdorff95(edge, shifted) == pytest.approx(
        _monai(HausdorffDistanceMetric(include_background=True, percentile=95), edge, shifted))
    with pytest.raises(ValueError):
        dice(one, np.zeros((8, 8, 9), bool))


def test_connectivity_and_small_lesion_removal_match_simpleitk():
    rng = np.random.default_rng(3)
    m = rng.random((16, 16, 16)) > 0.8
    for conn, fully in ((6, False), (26, True)):
        cc = sitk.ConnectedComponentImageFilter()
        cc.SetFullyConnected(fully)
        cc.Execute(sitk.GetImageFromArray(m.astype(np.uint8)))
        assert label_lesions(m, connectivity=conn, min_volume_mm3=0)[1] == cc.GetObjectCount()
    # 18-connectivity: edge neighbours join, corner neighbours do not
    a = np.zeros((5, 5, 5), bool)
    a[1, 1, 1] = a[2, 2, 1] = True          # share an edge
    assert label_lesions(a, connectivity=18, min_volume_mm3=0)[1] == 1
    assert label_lesions(a, connectivity=6, min_volume_mm3=0)[1] == 2
    b = np.zeros((5, 5, 5), bool)
    b[1, 1, 1] = b[2, 2, 2] = True          # share a corner only
    assert label_lesions(b, connectivity=18, min_volume_mm3=0)[1] == 2
    assert label_lesions(b, connectivity=26, min_volume_mm3=0)[1] == 1
    # MSSEG-2 (anima): a lesion is kept when it has more than ⌊3 mm³ / voxel volume⌋ voxels
    c = np.zeros((10, 10, 10), bool)
    c[1, 1, 1:3] = True                     # 2 voxels of 1 mm³: removed
    c[6, 6, 1:4] = True                     # 3 voxels = 3 mm³: removed (not more than 3)
    c[3, 3, 4:8] = True                     # 4 voxels: kept
    c[3, 8, 1:8] = True                     # 7 voxels: kept, the largest → label 1
    lab, n = label_lesions(c, spacing=(1, 1, 1))
    assert n == 2 and lab[3, 8, 1] == 1 and lab[3, 3, 4] == 2 and lab[6, 6, 1] == 0 and lab[1, 1, 1] == 0
    assert label_lesions(c, spacing=(0.5, 1, 1))[1] == 1   # ⌊3 / 0.5⌋ = 6: only the 7-voxel one stays
    # 2.1 mm³ / 0.3 mm³ is a hair above 7 in floating point; the floor is still 7, so 7 voxels go
    d = np.zeros((3, 3, 9), bool)
    d[1, 1, 1:8] = True
    assert label_lesions(d, spacing=(0.3, 1, 1), min_volume_mm3=2.0)[1] == 1
    assert label_lesions(d, spacing=(0.3, 1, 1), min_volume_mm3=2.1)[1] == 0


def _cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_detection_rules_alpha_beta_gamma():
    s = (40, 40, 40)
    ref = _cube(s, (5, 5, 5), (10, 10, 10)) | _cube(s, (20, 20, 20), (25, 25, 25))  # two 125-voxel lesions
    # exact prediction of both
    r = detect_lesions(ref, ref)
    assert (r.n_ref, r.n_pred, r.tp_ref, r.tp_pred, r.f1) == (2, 2, 2, 2, 1.0)
    # alpha: a prediction covering 8 % of lesion 1 (10 voxels) does not detect it; 24 % does
    small = _cube(s, (5, 5, 5), (7, 7, 7)) & ref          # 8 voxels = 6.4 %
    r = detect_lesions(small, ref)
    # the rule is symmetric: the tiny prediction lies inside a lesion, but that lesion is > 70 %
    # outside the prediction, so the prediction is not a true positive either
    assert r.tp_ref == 0 and r.n_pred == 1 and r.tp_pred == 0
    bigger = _cube(s, (5, 5, 5), (8, 8, 8))               # 27 voxels = 21.6 %
    assert detect_lesions(bigger, ref).tp_ref == 1
    # beta: a huge blob covering lesion 2 but lying > 70 % outside every reference lesion
    blob = _cube(s, (18, 18, 18), (32, 32, 32))           # 2744 voxels, 125 inside
    r = detect_lesions(blob, ref)
    assert r.tp_ref == 0 and r.tp_pred == 0 and r.sensitivity == 0.0 and r.ppv == 0.0 and r.f1 == 0.0
    # the same blob restricted to ≤ 70 % outside detects it
    ok_blob = _cube(s, (20, 20, 20), (25, 25, 30))        # 250 voxels, 50 % outside
    assert detect_lesions(ok_blob, ref).tp_ref == 1
    # gamma: lesion 1 covered by a good prediction (most overlap) and a bad one (mostly outside);
    # the good one alone accounts for ≥ 65 % of the covered voxels, so the bad one is never tested
    good = _cube(s, (5, 5, 5), (9, 10, 10))               # 100 voxels, all inside
    bad = _cube(s, (9, 5, 5), (10, 10, 10)) | _cube(s, (10, 4, 4), (16, 16, 16))
    bad &= ~good
    pred = good | bad
    lab, n = label_lesions(pred)
    assert n == 1  # they touch, one component → mostly inside, detected
    apart = good | _cube(s, (9, 5, 5), (10, 6, 6))  # joined: still fine
    assert detect_lesions(apart, ref).tp_ref == 1
    # no reference lesions: sensitivity undefined, predicted lesions counted (NLP)
    r = detect_lesions(bigger, np.zeros(s, bool), spacing=(1, 1, 2))
    assert math.isnan(r.sensitivity) and r.n_pred == 1 and r.ppv == 0.0 and math.isnan(r.f1)
    assert r.pred_volume_mm3 == 54.0
    # reference lesions but no prediction: every lesion missed, F1 0 (not undefined)
    r = detect_lesions(np.zeros(s, bool), bigger)
    assert r.n_ref == 1 and r.sensitivity == 0.0 and math.isnan(r.ppv) and r.f1 == 0.0


def test_gamma_stops_before_bad_minor_contributor():
    s = (30, 30, 30)
    ref = _cube(s, (5, 5, 5), (15, 15, 15))              # 1000 voxels
    good = _cube(s, (5, 5, 5), (12, 15, 15))             # 700 inside
    bad = _cube(s, (14, 5, 5), (15, 6, 6)) | _cube(s, (15, 5, 5), (28, 6, 6))  # 1 inside, 13 outside
    pred = good | bad
    assert label_lesions(pred)[1] == 2
    # covered = 701; good alone gives 700/701 ≥ 0.65 → stop before testing the bad one
    assert detect_lesions(pred, ref).tp_ref == 1
    # with gamma = 1.0 the bad one must be examined and vetoes the detection
    assert detect_lesions(pred, ref, gamma=1.0).tp_ref == 0


def test_case_rows_summary_and_wilcoxon():
    rng = np.random.default_rng(0)
    ref = np.zeros((20, 20, 20), np.int16)
    ref[5:15, 5:15, 5:15] = 2
    ref[8:12, 8:12, 8:12] = 1
    ref[9:11, 9:11, 9:11] = 3
    row = evaluate_arrays(ref, ref, "tumor", (1, 1, 1))
    assert row["dice_ET"] == row["dice_TC"] == row["dice_WT"] == 1.0
    assert row["ref_ml_WT"] == pytest.approx(1.0)
    wt_only = (ref > 0).astype(np.int16) * 2
    row = evaluate_arrays(wt_only, ref, "tumor", (1, 1, 1))
    assert row["dice_WT"] == 1.0 and row["dice_TC"] == 0.0 and math.isnan(row["hd95_ET"])
    # ms-new: case without new lesions → NLP/VLP only
    pred = np.zeros((20, 20, 20), np.int16)
    pred[2:4, 2:4, 2:4] = 1
    row = evaluate_arrays(pred, np.zeros_like(pred), "ms-new", (1, 1, 1))
    assert row["nlp"] == 1 and row["vlp_mm3"] == 8 and math.isnan(row["dice_new_lesion"])
    assert row["n_pred_lesions"] == 1 and math.isnan(row["lesion_sensitivity"])
    rows_a = [{"case": f"c{i}", "dice": float(v)} for i, v in enumerate(rng.uniform(0.7, 0.9, 12))]
    rows_b = [{"case": r["case"], "dice": r["dice"] - 0.05 - 0.01 * i} for i, r in enumerate(rows_a)]
    s = summarize(rows_a)[0]
    vals = [r["dice"] for r in rows_a]
    assert s["mean"] == pytest.approx(np.mean(vals)) and s["sd"] == pytest.approx(np.std(vals, ddof=1))
    cmp_ = wilcoxon_compare(rows_a, rows_b)[0]
    assert cmp_["n"] == 12 and cmp_["p_value"] < 0.01   # a always better → significant
    same = wilcoxon_compare(rows_a, rows_a)[0]
    assert same["p_value"] == 1.0


@pytest.mark.slow
def test_evaluation_and_dataset_code_import_without_torch():
    import subprocess
    import sys

    code = ("import sys, LesionFactorizerLib.evaluation.cohort, LesionFactorizerLib.datasets, "
            "LesionFactorizerLib.datalist, LesionFactorizerLib.cli.evaluate, LesionFactorizerLib.training.config; "
            "print(sorted(m for m in ('torch', 'lightning', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_evaluate_cli_writes_cases_summary_and_wilcoxon(tmp_path):
    import csv
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    for d in ("ref", "a", "b"):
        (tmp_path / d).mkdir()
    for i in range(8):
        ref = np.zeros((16, 16, 16), np.uint8)
        ref[4:12, 4:12, 4:12] = 2
        ref[6:10, 6:10, 6:10] = 1
        ref[7:9, 7:9, 7:9] = 3
        good = ref.copy()
        good[tuple(rng.integers(4, 12, 3))] = 0           # nearly perfect
        bad = np.roll(ref, 2 + i % 2, axis=0)              # shifted: clearly worse
        for arr, path in ((ref, tmp_path / "ref" / f"c{i}.nii.gz"), (good, tmp_path / "a" / f"c{i}" / "segmentation.nii.gz"),
                          (bad, tmp_path / "b" / f"c{i}.nii.gz")):
            path.parent.mkdir(exist_ok=True)
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((1.0, 1.0, 2.0))
            sitk.WriteImage(img, str(path))
    out = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "evaluate", "--task", "tumor",
                          "--pred", str(tmp_path / "a"), "--pred-b", str(tmp_path / "b"), "--ref", str(tmp_path / "ref"),
                          "--out", str(tmp_path / "eval")], capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    cases = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv", encoding="utf-8")))
    assert len(cases) == 8 and all(float(r["dice_WT"]) > 0.99 for r in cases)
    # MONAI's convention is the default and every output names it
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text(encoding="utf-8"))["convention"] == "monai"
    assert "convention: MONAI" in out.stdout
    summary = {r["metric"]: r for r in csv.DictReader(open(tmp_path / "eval" / "summary_b.csv", encoding="utf-8"))}
    assert float(summary["dice_WT"]["mean"]) < 0.9 and int(summary["dice_WT"]["n"]) == 8
    wil = {r["metric"]: r for r in csv.DictReader(open(tmp_path / "eval" / "wilcoxon.csv", encoding="utf-8"))}
    assert float(wil["dice_ET"]["p_value"]) < 0.05 and float(wil["dice_ET"]["mean_a"]) > float(wil["dice_ET"]["mean_b"])
    # a prediction on another grid is refused with one line, exit code 2
    img = sitk.GetImageFromArray(np.zeros((16, 16, 16), np.uint8))   # same size, other spacing
    sitk.WriteImage(img, str(tmp_path / "a" / "c0" / "segmentation.nii.gz"))
    out = main_in_process("evaluate", "--task", "tumor", "--pred", tmp_path / "a", "--ref", tmp_path / "ref",
                          "--out", tmp_path / "e2")
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and last.startswith("error: case c0") and "grid" in last
    assert not (tmp_path / "e2").exists()   # nothing written on failure


@pytest.mark.slow
def test_evaluate_reads_public_layouts_without_the_training_package(tmp_path):
    """``evaluate --ref-format brats`` converts BraTS-2021 labels (ET = 4) with the library's own
    layout code; the core command never imports the training package."""
    import subprocess
    import sys

    from LesionFactorizerLib.datasets import BRATS_2021_LABELS, convert_labels
    from LesionFactorizerLib.training import synthetic

    root = synthetic.make_brats(tmp_path / "brats", n=2, shape=(16, 14, 12), seed=4)
    (tmp_path / "pred").mkdir()
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        seg = sitk.ReadImage(str(case / f"{case.name}_seg.nii.gz"))
        pred = sitk.GetImageFromArray(convert_labels(sitk.GetArrayFromImage(seg), BRATS_2021_LABELS))
        pred.CopyInformation(seg)
        sitk.WriteImage(pred, str(tmp_path / "pred" / f"{case.name}.nii.gz"))
    code = ("import argparse, sys\n"
            "from LesionFactorizerLib.cli import evaluate\n"
            "p = argparse.ArgumentParser(); evaluate.add_arguments(p)\n"
            "rc = evaluate.run(p.parse_args(sys.argv[1:]))\n"
            "print('training imported' if any(m.startswith('LesionFactorizerLib.training') for m in sys.modules)"
            " else 'training not imported', rc)\n")
    common = ["--task", "tumor", "--pred", str(tmp_path / "pred"), "--out"]
    out = subprocess.run([sys.executable, "-c", code, *common, str(tmp_path / "e"), "--ref", str(root),
                          "--ref-format", "brats"], capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "training not imported 0"
    import csv

    rows = list(csv.DictReader(open(tmp_path / "e" / "cases.csv", encoding="utf-8")))
    assert len(rows) == 2 and all(float(r["dice_ET"]) == 1.0 and float(r["ref_ml_ET"]) > 0 for r in rows)
    # the same BraTS-2021 files as plain reference files: ET=4 is not a tumor label → refused, not dropped
    (tmp_path / "ref").mkdir()
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        (tmp_path / "ref" / f"{case.name}.nii.gz").write_bytes((case / f"{case.name}_seg.nii.gz").read_bytes())
    out = subprocess.run([sys.executable, "-c", code, *common, str(tmp_path / "f"), "--ref", str(tmp_path / "ref")],
                         capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert out.returncode != 0 and "label value(s) [4]" in out.stderr
