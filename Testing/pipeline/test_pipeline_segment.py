"""segment_case as a whole: ensembles, warnings as they arise, the model's post-processing rule,
NMF settings between cases, speed presets."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import save_threshold_model, write_case

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.outputspec import OutputSpec
from LesionFactorizerLib.pipeline.progress import Progress
from LesionFactorizerLib.pipeline.segment import segment_case
from LesionFactorizerLib.core.settings import SegmentSettings
from LesionFactorizerLib.core.speed_presets import SPEED_PRESETS
from LesionFactorizerLib.core.tasks import get_task


def _options(paths, out, models, **kw) -> tuple:
    """``segment_case``'s inputs, output and settings."""
    return paths, out, SegmentSettings(task=kw.pop("task", "stroke"), models=list(models), device="cpu",
                                       overview=False, **kw)


@pytest.mark.parametrize("change, what", [
    ({"spacing": (2.0, 2.0, 2.0)}, "preprocessing.spacing"),
    ({"patch": (16, 16, 16)}, "preprocessing.patch_size"),
    ({"postprocessing": {"threshold": 0.7}}, "postprocessing.threshold"),
])
@pytest.mark.slow
def test_ensemble_members_with_other_preprocessing_are_refused(tmp_path, change, what):
    """A second model must not silently run on the first model's spacing / patch / rule."""
    paths = write_case(tmp_path / "in")
    a = save_threshold_model(tmp_path / "a.safetensors")
    b = save_threshold_model(tmp_path / "b.safetensors", **change)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=f"ensemble members must share {what}: b.safetensors"):
        segment_case(*_options(paths, out, [a, b]))
    assert not out.exists()
    same = save_threshold_model(tmp_path / "same.safetensors")   # an equal member is fine
    outputs = segment_case(*_options(paths, out, [a, same])).outputs
    assert len(json.loads(open(outputs["report"], encoding="utf-8").read())["models"]) == 2


@pytest.mark.slow
def test_every_warning_is_emitted_as_it_arises_and_kept_in_the_report(tmp_path):
    paths = write_case(tmp_path / "in", names=("dwi", "flair"))
    adc = sitk.ReadImage(paths["dwi"])
    coarse = sitk.Resample(adc, [s // 2 for s in adc.GetSize()], sitk.Transform(), sitk.sitkLinear, adc.GetOrigin(),
                           [2 * s for s in adc.GetSpacing()], adc.GetDirection())
    paths["adc"] = str(tmp_path / "in" / "adc_coarse.nii.gz")
    sitk.WriteImage(coarse, paths["adc"])
    model = save_threshold_model(tmp_path / "thr.safetensors")          # uses dwi + adc, not flair
    stream = io.StringIO()
    outputs = segment_case(*_options(paths, tmp_path / "out", [model]), Progress("jsonl", stream=stream)).outputs
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    emitted = [e["message"] for e in events if e["event"] == "warning"]
    report = json.loads(open(outputs["report"], encoding="utf-8").read())
    assert emitted == report["warnings"]
    assert any("flair" in w and "not used by the model" in w for w in emitted)
    assert any("adc" in w and "resampled" in w for w in emitted)
    # the resampling warning comes during reading, before inference starts
    first_inference = next(i for i, e in enumerate(events) if e.get("stage") == "inference")
    resampled = next(i for i, e in enumerate(events) if e["event"] == "warning" and "resampled" in e["message"])
    assert resampled < first_inference


@pytest.mark.slow
def test_the_model_files_post_processing_mode_is_the_one_applied(tmp_path):
    """A tumour model with one sigmoid 'lesion' channel and postprocessing.mode=threshold labels
    its voxels 1; with the task's hierarchical rule it could not run at all."""
    names = ("flair", "t1", "t1ce", "t2")
    paths = write_case(tmp_path / "in", names=names)
    model = save_threshold_model(tmp_path / "t.safetensors", task="tumor", in_channels=4, out_channels=1,
                                 outputs={"activation": "sigmoid", "channels": ["lesion"]},
                                 postprocessing={"mode": "threshold"})
    outputs = segment_case(*_options(paths, tmp_path / "out", [model], task="tumor")).outputs
    report = json.loads(open(outputs["report"], encoding="utf-8").read())
    assert report["settings"]["mode"] == "threshold"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(outputs["segmentation"]))
    assert set(np.unique(labels).tolist()) == {0, 1} and report["lesion_count"] == 1
    # a rule the task cannot apply is refused before any work, not after inference
    stroke = write_case(tmp_path / "stroke")
    nested = save_threshold_model(tmp_path / "n.safetensors", postprocessing={"mode": "hierarchical"})
    with pytest.raises(UserError, match="needs nested regions"):
        segment_case(*_options(stroke, tmp_path / "out2", [nested]), Progress("jsonl", stream=io.StringIO()))
    assert not (tmp_path / "out2").exists()


def test_resolved_mode_follows_the_outputs():
    tumor, stroke = get_task("tumor"), get_task("stroke")
    regions, labels = ["ET", "TC", "WT"], ["background", "NCR", "ED", "ET"]
    assert OutputSpec.resolve(tumor, "sigmoid", regions).mode == "hierarchical"
    # softmax outputs: argmax, or thresholded by region (thesis 8.3.6) where the task has nested regions
    assert OutputSpec.resolve(tumor, "softmax", labels, {"mode": "hierarchical"}).mode == "hierarchical"
    assert OutputSpec.resolve(tumor, "softmax", labels, {"mode": "threshold"}).mode == "argmax"
    assert OutputSpec.resolve(stroke, "softmax", ["background", "infarct"], {"mode": "hierarchical"}).mode == "argmax"
    assert OutputSpec.resolve(tumor, "sigmoid", ["WT"], {"mode": "threshold"}).mode == "threshold"
    with pytest.raises(UserError, match="needs nested regions"):
        OutputSpec.resolve(stroke, "sigmoid", ["infarct"], {"mode": "hierarchical"})
    with pytest.raises(UserError, match="needs softmax"):
        OutputSpec.resolve(stroke, "sigmoid", ["infarct"], {"mode": "argmax"})
    with pytest.raises(UserError, match="lacks output channel"):
        OutputSpec.resolve(tumor, "sigmoid", ["ET", "WT"])
    with pytest.raises(UserError, match="not a label"):
        OutputSpec.resolve(tumor, "softmax", ["background", "NCR", "edema", "ET"])


@pytest.mark.slow
def test_nmf_settings_of_one_case_do_not_leak_into_the_next():
    """batch reuses loaded models: after a --preset fast case, a balanced case must get the trained
    iterations back, also when the model's config does not spell nmf_iters out."""
    import torch

    from LesionFactorizerLib import build_model
    from LesionFactorizerLib.pipeline.inference import apply_nmf_settings

    torch.manual_seed(0)
    default = build_model("swin-factorizer-isles", widths=(8, 16, 32, 64, 128))
    assert "nmf_iters" not in default.config["kwargs"]
    trained = {name: layer.nmf.iters for name, layer in default.nmf_layers().items()}
    explicit = build_model("swin-factorizer-isles", widths=(8, 16, 32, 64, 128), nmf_iters=3)
    fast = SPEED_PRESETS["fast"]
    for model, expected in ((default, trained), (explicit, dict.fromkeys(trained, 3))):
        apply_nmf_settings([model], fast["nmf_iters"], fast["skip_nmf"])
        layers = model.nmf_layers()
        assert all(layer.nmf.iters == 2 for layer in layers.values()) and layers["decoder1"].skip
        apply_nmf_settings([model], None, None)
        assert {n: layer.nmf.iters for n, layer in layers.items()} == expected
        assert not any(layer.skip for layer in layers.values())


def test_speed_presets_are_the_segment_commands_choices():
    from LesionFactorizerLib.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["segment", "-o", "x", "--preset", "fast"])
    assert args.preset == "fast"
    for name in SPEED_PRESETS:
        assert parser.parse_args(["segment", "-o", "x", "--preset", name]).preset == name
    with pytest.raises(UserError, match="unknown preset"):
        SegmentSettings(preset="turbo").check()
    with pytest.raises(UserError, match="--nmf-iters must be at least 1"):
        SegmentSettings(nmf_iters=0).check()
