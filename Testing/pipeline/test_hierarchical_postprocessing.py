"""Hierarchical post-processing (thesis 8.3.6): WT by threshold, TC thresholded inside WT, ET vs
necrosis inside TC; per-region thresholds from the model file; ensembles average probabilities."""

import json

import numpy as np
import pytest
import torch

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.outputspec import BACKGROUND, OutputSpec
from LesionFactorizerLib.core.spec import parse_spec
from LesionFactorizerLib.modelfile import make_metadata
from LesionFactorizerLib.core.tasks import get_task

TUMOR = get_task("tumor")
SOFTMAX_CHANNELS = [BACKGROUND, "NCR", "ED", "ET"]


def _regions_of(labels):
    return {"WT": np.isin(labels, (1, 2, 3)), "TC": np.isin(labels, (1, 3)), "ET": labels == 3}


def _random_softmax(rng, shape):
    x = rng.normal(size=(4, *shape)) * 2
    e = np.exp(x - x.max(0))
    return (e / e.sum(0)).astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_each_region_is_its_threshold_inside_the_region_around_it(seed):
    """Sigmoid channels that contradict the nesting (ET > TC > WT somewhere) and any per-region
    thresholds: each labelled region is exactly its own thresholded probability inside the next
    larger labelled region, so ET ⊂ TC ⊂ WT whatever the network says."""
    rng = np.random.default_rng(seed)
    probs = rng.random((3, 6, 7, 8)).astype(np.float32)           # channels ET, TC, WT
    t = {name: float(v) for name, v in zip(("WT", "TC", "ET"), rng.uniform(0.2, 0.8, 3))}
    spec = OutputSpec.resolve(TUMOR, "sigmoid", ["ET", "TC", "WT"], {"thresholds": t})
    got = _regions_of(spec.to_labels(probs))
    p = dict(zip(("ET", "TC", "WT"), probs))
    assert np.array_equal(got["WT"], p["WT"] > t["WT"])
    assert np.array_equal(got["TC"], (p["TC"] > t["TC"]) & got["WT"])
    assert np.array_equal(got["ET"], (p["ET"] > t["ET"]) & got["TC"])
    assert (p["ET"] > t["ET"])[~got["TC"]].any()                    # the nesting removed something


@pytest.mark.parametrize("seed", range(3))
def test_softmax_outputs_are_thresholded_by_summed_region_probabilities(seed):
    rng = np.random.default_rng(seed)
    probs = _random_softmax(rng, (5, 6, 7))
    t = {"WT": 0.45, "TC": 0.35, "ET": 0.25}
    spec = OutputSpec.resolve(TUMOR, "softmax", SOFTMAX_CHANNELS, {"mode": "hierarchical", "thresholds": t})
    assert spec.mode == "hierarchical"
    got = _regions_of(spec.to_labels(probs))
    bg, ncr, ed, et = probs
    assert np.array_equal(got["WT"], ncr + ed + et > t["WT"])
    assert np.array_equal(got["TC"], (ncr + et > t["TC"]) & got["WT"])
    assert np.array_equal(got["ET"], (et > t["ET"]) & got["TC"])


def test_one_voxel_where_hierarchical_and_argmax_differ():
    # background 0.4 beats every single label, but the tumour as a whole (0.6) passes 0.5; its
    # core (necrosis + enhancing 0.5) passes 0.45, and enhancing alone (0.3) does not pass 0.5:
    # necrosis by the hierarchical scheme, background by arg-max
    probs = np.array([0.4, 0.2, 0.1, 0.3], np.float32).reshape(4, 1, 1, 1)
    hier = OutputSpec.resolve(TUMOR, "softmax", SOFTMAX_CHANNELS, {"mode": "hierarchical", "thresholds": {"TC": 0.45}})
    assert hier.to_labels(probs).item() == 1
    assert hier.with_overrides(mode="argmax").to_labels(probs).item() == 0


def test_argmax_of_sigmoid_regions_uses_the_shells_between_them():
    # WT 0.9, TC 0.8, ET 0.1: shells background 0.1, edema 0.1, necrosis 0.7, enhancing 0.1 → necrosis
    spec = OutputSpec.resolve(TUMOR, "sigmoid", ["ET", "TC", "WT"], {"mode": "argmax"})
    probs = np.array([0.1, 0.8, 0.9], np.float32).reshape(3, 1, 1, 1)
    assert spec.to_labels(probs).item() == 1
    # an inner region more probable than the outer one is capped by it: ET 0.9 in TC 0.3 in WT 0.35
    probs = np.array([0.9, 0.3, 0.35], np.float32).reshape(3, 1, 1, 1)
    assert spec.to_labels(probs).item() == 0                     # background 0.65 wins


def test_thresholds_are_read_from_the_model_file_and_checked():
    meta = make_metadata("tumor", {"name": "unet", "kwargs": {"out_channels": 3}},
                         postprocessing={"mode": "hierarchical", "thresholds": {"WT": 0.4, "ET": 0.6}})
    spec = parse_spec(json.loads(json.dumps({**meta, "weights": {"sha256": "0" * 64}})))
    out = OutputSpec.resolve(TUMOR, spec.outputs.activation, spec.outputs.channels, spec.postprocessing.given())
    assert (out.threshold_for("WT"), out.threshold_for("TC"), out.threshold_for("ET")) == (0.4, 0.5, 0.6)
    assert out.settings()["thresholds"] == {"WT": 0.4, "ET": 0.6}
    assert out.with_overrides(threshold=0.3).threshold_for("ET") == 0.3    # --threshold replaces them all
    for bad in ({"XX": 0.5}, {"WT": 1.5}, {}, [0.5]):
        broken = {**meta, "weights": {"sha256": "0" * 64}, "postprocessing": {"thresholds": bad}}
        with pytest.raises(UserError, match="thresholds"):
            parse_spec(broken)
    stroke = make_metadata("stroke", {"name": "unet", "kwargs": {}}, postprocessing={"thresholds": {"WT": 0.4}})
    with pytest.raises(UserError, match="thresholds"):
        parse_spec({**stroke, "weights": {"sha256": "0" * 64}})


def test_postprocess_argmax_is_refused_where_it_has_no_meaning():
    stroke = OutputSpec.for_task(get_task("stroke"))
    with pytest.raises(UserError, match="argmax"):
        stroke.with_overrides(mode="argmax")
    with pytest.raises(UserError, match="hierarchical"):
        stroke.with_overrides(mode="hierarchical")


def test_an_ensemble_under_the_hierarchical_rule_averages_probabilities():
    from LesionFactorizerLib.pipeline.inference import run_inference
    from testnets import ThresholdNet

    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 8)).astype(np.float32)
    models = [ThresholdNet(2, 3, channel=0, threshold=0.0, gain=g).eval() for g in (1.0, 9.0)]
    with torch.no_grad():
        probs = [torch.sigmoid(m(torch.from_numpy(x)[None]))[0].numpy() for m in models]
    kw = dict(roi=(8, 8, 8), overlap=0.0, align=8, device="cpu", backend="eager")
    mean_p = run_inference(models, x, average_probabilities="sigmoid", **kw).logits
    mean_logits = run_inference(models, x, **kw).logits
    np.testing.assert_allclose(1 / (1 + np.exp(-mean_p)), (probs[0] + probs[1]) / 2, atol=1e-5)
    assert not np.allclose(1 / (1 + np.exp(-mean_logits)), (probs[0] + probs[1]) / 2, atol=1e-3)
