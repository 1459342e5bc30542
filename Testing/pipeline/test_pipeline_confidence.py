"""Per-lesion confidence: the per-pass foreground rule, pass-agreement bits, lesions.csv / report.json
columns and the --uncertainty map, on real files through the real pipeline."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LesionFactorizerLib.core.outputspec import OutputSpec
from LesionFactorizerLib.pipeline.confidence import (binary_entropy, foreground_probability, pass_foreground,
                                                     popcount, vote_dtype)
from LesionFactorizerLib.pipeline.postprocessing import activate
from LesionFactorizerLib.core.tasks import get_task


@pytest.mark.parametrize("task, activation, channels", [
    ("tumor", "sigmoid", ["ET", "TC", "WT"]), ("stroke", "sigmoid", ["infarct"]),
    ("tumor", "softmax", ["background", "NCR", "ED", "ET"])])
def test_one_pass_foreground_is_where_that_pass_alone_labels_a_lesion(task, activation, channels):
    spec = OutputSpec.resolve(get_task(task), activation, channels)
    logits = np.random.default_rng(1).normal(0, 2, (len(channels), 6, 7, 8)).astype(np.float32)
    labels = spec.to_labels(activate(logits.copy(), activation))
    fg = pass_foreground(spec)(torch.from_numpy(logits)[None]).numpy()
    assert np.array_equal(fg, labels > 0)
    probs = activate(logits.copy(), activation)
    p = foreground_probability(probs, spec)
    if activation == "sigmoid":   # the lesion is exactly where the foreground probability passes the threshold
        assert np.array_equal(p > spec.threshold, labels > 0)
    assert p.dtype == np.float32 and p.min() >= 0 and p.max() <= 1


def test_entropy_bits_and_pass_counting():
    assert binary_entropy(np.array([0.0, 0.5, 1.0], np.float32)).tolist() == [0.0, 1.0, 0.0]
    assert binary_entropy(np.array([0.1], np.float32))[0] == pytest.approx(0.469, abs=1e-3)
    assert [vote_dtype(n) for n in (2, 8, 9, 64, 65)] == [np.uint8, np.uint8, np.uint16, np.uint64, None]
    values = np.array([0, 1, 0b1011, 255], np.uint8)
    assert popcount(values).tolist() == [0, 1, 3, 8]


def _case(tmp_path):
    """Two bright blobs in noise: a very bright one and a dimmer one; z-scores known exactly."""
    rng = np.random.default_rng(0)
    array = (100 + 5 * rng.standard_normal((20, 24, 28))).astype(np.float32)
    array[4:9, 5:10, 18:24] = 400      # blob A: on the image's +x side (LPS: patient left)
    array[12:16, 14:18, 3:7] = 250     # blob B: on the -x side (patient right)
    z = (array - array.mean(dtype=np.float64)) / array.std(dtype=np.float64)
    paths = {}
    for name in ("dwi", "adc"):
        image = sitk.GetImageFromArray(array)
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(image, paths[name])
    return paths, float(z[5, 6, 20]), float(z[13, 15, 4])


def _run(tmp_path, models, name, **options):
    from LesionFactorizerLib.pipeline.segment import segment_case
    from LesionFactorizerLib.core.settings import SegmentSettings

    paths = {k: v for k, v in options.pop("paths").items()}
    outputs = segment_case(paths, str(tmp_path / name), SegmentSettings(models=models, device="cpu", overview=False,
                                                                        **options)).outputs
    report = json.loads((tmp_path / name / "report.json").read_text(encoding="utf-8"))
    with open(tmp_path / name / "lesions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return outputs, report, rows


@pytest.mark.parametrize("spacing", [None, [2.0, 2.0, 2.0]])
@pytest.mark.slow
def test_ensemble_and_tta_agreement_per_lesion(tmp_path, spacing):
    """Member 1 finds both blobs, member 2 only the bright one, the ensemble both: the dim blob was
    found by half of the 8 passes (2 members x 4 TTA flips), the bright one by all."""
    from helpers import save_threshold_model

    paths, z_a, z_b = _case(tmp_path)
    low = save_threshold_model(tmp_path / "low.safetensors", threshold=0.5 * z_b, patch=(16, 16, 16),
                               spacing=spacing)
    high = save_threshold_model(tmp_path / "high.safetensors", threshold=1.2 * z_b, patch=(16, 16, 16),
                                spacing=spacing)
    assert z_a > 1.2 * z_b
    outputs, report, rows = _run(tmp_path, [low, high], "ens", paths=paths, tta=True)
    assert report["settings"]["passes"] == 8 and report["confidence"]["passes"] == 8
    assert "note" not in report["confidence"]
    assert report["lesion_count"] == 2
    bright, dim = sorted(report["lesions"], key=lambda r: -r["confidence"])
    assert bright["detected_fraction"] == 1.0 and dim["detected_fraction"] == 0.5
    if spacing is None:   # on the input grid every voxel of a blob has one intensity: exact agreement
        assert bright["agreement"] == pytest.approx(1.0) and dim["agreement"] == pytest.approx(0.5)
    else:                 # resampled: the blobs' interpolated rims are labelled by fewer passes
        assert 0.5 < bright["agreement"] <= 1.0 and 0 < dim["agreement"] <= 0.5
    assert bright["confidence"] > dim["confidence"] > 0.5
    assert 0.0 <= bright["uncertainty"] < dim["uncertainty"] <= 1.0
    assert bright["side"] == "left" and dim["side"] == "right"   # +x in LPS is the patient's left
    # lesions.csv carries the same numbers, one row per lesion
    by_id = {int(r["id"]): r for r in rows}
    for lesion in report["lesions"]:
        row = by_id[lesion["id"]]
        assert float(row["confidence"]) == pytest.approx(lesion["confidence"], abs=1e-4)
        assert float(row["detected_fraction"]) == pytest.approx(lesion["detected_fraction"], abs=1e-4)
        assert row["side"] == lesion["side"]
    # the seed voxel lies inside its lesion
    seg = sitk.GetArrayFromImage(sitk.ReadImage(outputs["segmentation"]))
    for lesion in report["lesions"]:
        i, j, k = lesion["seed_index"]
        assert seg[k, j, i] > 0


@pytest.mark.slow
def test_one_pass_says_so_and_uncertainty_map_is_written_and_verified(tmp_path):
    from helpers import save_threshold_model

    paths, z_a, z_b = _case(tmp_path)
    model = save_threshold_model(tmp_path / "m.safetensors", threshold=0.8 * z_b, patch=(16, 16, 16))
    outputs, report, rows = _run(tmp_path, [model], "one", paths=paths, uncertainty=True, probabilities=True)
    assert report["settings"]["passes"] == 1
    assert "--tta" in report["confidence"]["note"]
    assert all(r["detected_fraction"] is None and r["agreement"] is None for r in report["lesions"])
    assert all(r["detected_fraction"] == "" and r["agreement"] == "" and r["confidence"] for r in rows)
    # uncertainty.nii.gz: beside the probabilities, on the segmentation's grid, the entropy of them
    assert report["outputs"]["uncertainty"] == "uncertainty.nii.gz"
    unc_img = sitk.ReadImage(outputs["uncertainty"])
    seg_img = sitk.ReadImage(outputs["segmentation"])
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(unc_img, get)(), getattr(seg_img, get)())
    unc = sitk.GetArrayFromImage(unc_img)
    prob = sitk.GetArrayFromImage(sitk.ReadImage(outputs["probabilities"]))
    assert unc.dtype == np.float32 and 0 <= unc.min() and unc.max() <= 1
    assert np.allclose(unc, binary_entropy(prob), atol=1e-5)
    # not asked for: not written
    outputs2, report2, _ = _run(tmp_path, [model], "plain", paths=paths)
    assert "uncertainty" not in outputs2 and not (tmp_path / "plain" / "uncertainty.nii.gz").exists()


def test_uncertainty_option_reaches_the_cli_and_the_worker_argv():
    from LesionFactorizerLib.cli import build_parser
    from LesionFactorizerLib.pipeline.segment import output_claims
    from LesionFactorizerLib.core.settings import SegmentSettings

    assert SegmentSettings(uncertainty=True).to_argv() == ["--uncertainty"]
    assert SegmentSettings(uncertainty=False).to_argv() == []
    args = build_parser().parse_args(["segment", "-o", "out", "--uncertainty"])
    assert SegmentSettings.from_args(args).uncertainty is True
    assert "uncertainty.nii.gz" in output_claims() and "uncertainty.nrrd" in output_claims()
