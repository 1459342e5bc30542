"""benchmarks/bench_confidence.py on real files: its TP/FP matching and summary through the real
Segmenter, and its --shift really changing the held-out phantoms it writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_confidence", REPO / "benchmarks" / "bench_confidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_true_and_false_positive_lesions_are_told_apart_and_summarised(tmp_path, bench):
    """Two bright blobs; an ensemble of two threshold models finds the bright one with both and the
    dim one with one. The truth holds only the bright one, so the dim one is the false positive."""
    from helpers import save_threshold_model

    from LesionFactorizerLib.pipeline.segment import Segmenter
    from LesionFactorizerLib.core.settings import SegmentSettings

    rng = np.random.default_rng(0)
    array = (100 + 5 * rng.standard_normal((20, 24, 28))).astype(np.float32)
    array[4:9, 5:10, 18:24] = 400      # A: in the truth
    array[12:16, 14:18, 3:7] = 250     # B: not in the truth
    z_b = (250 - array.mean(dtype=np.float64)) / array.std(dtype=np.float64)
    truth = np.zeros(array.shape, np.uint8)
    truth[5:8, 6:9, 19:23] = 1         # overlapping A only, smaller than it: overlap is enough
    paths = {}
    for name, data in (("dwi", array), ("adc", array), ("label", truth)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(data), paths[name])
    low = save_threshold_model(tmp_path / "low.safetensors", threshold=0.5 * z_b, patch=(16, 16, 16))
    high = save_threshold_model(tmp_path / "high.safetensors", threshold=1.2 * z_b, patch=(16, 16, 16))
    segmenter = Segmenter(SegmentSettings(models=[low, high], device="cpu", tta=True, overview=False, overwrite=True))
    result = segmenter.segment({"dwi": paths["dwi"], "adc": paths["adc"]}, tmp_path / "out", overwrite=True)

    rows = bench.classify(result.report, result.outputs["segmentation"], Path(paths["label"]))
    assert len(rows) == 2 and sorted(r["tp"] for r in rows) == [False, True]
    tp, fp = (next(r for r in rows if r["tp"] is want) for want in (True, False))
    assert tp["volume_ml"] > fp["volume_ml"]          # A is the larger blob: the truth picked the right one
    assert tp["confidence"] > fp["confidence"]
    assert tp["detected_fraction"] == 1.0 and fp["detected_fraction"] == 0.5   # 2 models x 4 TTA flips

    summary = bench.summarise(rows)
    assert (summary["lesions"], summary["tp"], summary["fp"]) == (2, 1, 1)
    conf = summary["confidence"]
    assert conf["tp"]["n"] == 1 and conf["tp"]["mean"] == pytest.approx(tp["confidence"])
    assert conf["fp"]["n"] == 1 and conf["fp"]["median"] == pytest.approx(fp["confidence"])
    assert conf["auroc"] == 1.0                       # the one TP outranks the one FP
    assert summary["uncertainty"]["auroc"] == 1.0     # lower uncertainty counts as TP-like
    assert summary["detected_fraction"]["auroc"] == 1.0
    assert summary["volume_ml"]["auroc"] == 1.0       # the size baseline: the TP is the larger one


def test_summary_statistics_and_auroc(bench):
    rows = ([{"tp": True, "confidence": c, "uncertainty": 1 - c, "detected_fraction": None, "agreement": None}
             for c in (0.9, 0.8, 0.7, 0.6)]
            + [{"tp": False, "confidence": c, "uncertainty": 1 - c, "detected_fraction": None, "agreement": None}
               for c in (0.65, 0.5)])
    s = bench.summarise(rows)
    assert s["confidence"]["tp"] == {"n": 4, "mean": pytest.approx(0.75), "median": pytest.approx(0.75),
                                     "q1": pytest.approx(0.675), "q3": pytest.approx(0.825)}
    assert s["confidence"]["auroc"] == pytest.approx(7 / 8)   # 0.6 < 0.65 is the one lost pair
    assert s["uncertainty"]["auroc"] == pytest.approx(7 / 8)
    assert s["agreement"] == {"tp": {"n": 0}, "fp": {"n": 0}, "auroc": None}
    rows[3]["confidence"] = 0.65   # now ties with the FP at 0.65: a tie counts half
    assert bench.summarise(rows)["confidence"]["auroc"] == pytest.approx(7.5 / 8)


@pytest.mark.slow
def test_shift_adds_noise_and_bias_and_coarsens_the_scan_but_keeps_the_truth(tmp_path, bench):
    spacing = 6.0    # a tiny phantom: the shift does not depend on the grid
    plain = bench.held_out_case("stroke", 7100, 0, spacing, tmp_path / "plain", bench.parse_shift("none"))
    noisy = bench.held_out_case("stroke", 7100, 0, spacing, tmp_path / "noisy", bench.parse_shift("snr=5"))
    biased = bench.held_out_case("stroke", 7100, 0, spacing, tmp_path / "biased", bench.parse_shift("bias=0.5"))
    coarse = bench.held_out_case("stroke", 7100, 0, spacing, tmp_path / "coarse", bench.parse_shift("hard"))
    label = _read(plain[1])
    assert label.any()
    for other in (noisy, biased):   # the same patient and lesion: only the images changed
        assert np.array_equal(_read(other[1]), label)
    for name in ("dwi", "adc", "flair"):
        before = _read(plain[0][name])
        brain = before != 0
        after = _read(noisy[0][name])
        assert np.array_equal(after != 0, brain) or ((after != 0) <= brain).all()   # nothing outside the brain
        # independent noise of the stated size was added: sigma = median brain intensity / 5 (Rician
        # at that SNR is close to Gaussian); the image's total noise grows accordingly
        added = (after.astype(np.float64) - before)[brain]
        assert added.std() == pytest.approx(np.median(before[brain]) / 5, rel=0.15)
        assert after[brain].std() > before[brain].std()
        ratio = _read(biased[0][name]).astype(np.float64)[brain] / np.maximum(before[brain], 1)
        if name == "adc":   # a ratio of two images from one coil: its bias cancels
            assert np.array_equal(_read(biased[0][name]), before)
        else:
            assert np.std(np.log(np.clip(ratio, 1e-3, None))) > 0.2
    # "hard" also scans the same patient at 1.5 x the spacing: fewer, larger voxels
    img_plain, img_coarse = sitk.ReadImage(plain[0]["dwi"]), sitk.ReadImage(coarse[0]["dwi"])
    assert img_coarse.GetSpacing()[0] == pytest.approx(1.5 * img_plain.GetSpacing()[0])
    assert np.prod(img_coarse.GetSize()) < np.prod(img_plain.GetSize())
    # the shift is reproducible: the same case, the same voxels
    again = bench.held_out_case("stroke", 7100, 0, spacing, tmp_path / "again", bench.parse_shift("snr=5"))
    assert np.array_equal(_read(again[0]["dwi"]), _read(noisy[0]["dwi"]))


@pytest.mark.parametrize("text", ["loud", "snr", "snr=0", "snr=x", "bias=nan", "gain=2", "snr=5,blur=1"])
def test_bad_shift_is_refused(bench, text):
    with pytest.raises(ValueError, match="--shift"):
        bench.parse_shift(text)
    assert bench.parse_shift("mild") == bench.SHIFTS["mild"] and bench.parse_shift("none") == {}
    assert bench.describe_shift({}).startswith("none")
