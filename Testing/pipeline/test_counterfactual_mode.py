"""The counterfactual is a mode of the Segmenter (``Segmenter.from_report``): it repeats the recorded
run with every recorded setting — a setting the report records by name, not a few rebuilt by hand —
through the Segmenter's own stages, so its whole-layer variant is exactly a ``segment`` run with that
layer short-circuited.

Real files: the bundled tumor sample cropped around its lesion, the bundled tumor demo model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from LesionFactorizerLib.demo import bundled_demo_model
from LesionFactorizerLib.phantoms.samples import sample_case
from LesionFactorizerLib.pipeline.groups import DropComponent
from LesionFactorizerLib.pipeline.segment import Segmenter, segment_case
from LesionFactorizerLib.core.settings import SegmentSettings

HALF_MM = 30.0


def _cropped_tumor_sample(folder, half_mm: float) -> dict[str, str]:
    sample = sample_case("tumor")
    label = sitk.ReadImage(sample["label"])
    centre = np.round(np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(axis=0)).astype(int)[::-1]
    half = np.ceil(half_mm / np.array(label.GetSpacing())).astype(int)
    lo = np.maximum(centre - half, 0)
    size = np.minimum(centre + half, np.array(label.GetSize())) - lo
    inputs = {}
    for name, path in sample["inputs"].items():
        inputs[name] = str(folder / f"{name}.nii.gz")
        sitk.WriteImage(sitk.RegionOfInterest(sitk.ReadImage(path), [int(s) for s in size], [int(v) for v in lo]),
                        inputs[name])
    return inputs


def _labels(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def argmax_run(tmp_path_factory):
    """A tumor run away from the model's default label rule (argmax instead of hierarchical)."""
    folder = tmp_path_factory.mktemp("cfmode")
    inputs = _cropped_tumor_sample(folder, HALF_MM)
    settings = SegmentSettings(models=[str(bundled_demo_model("tumor"))], device="cpu", postprocess="argmax",
                               overlap=0.25, components=True, format="nrrd", overview=False)
    segment_case(inputs, folder / "run", settings)
    return {"folder": folder, "inputs": inputs, "settings": settings}


@pytest.mark.slow
def test_whole_layer_counterfactual_is_a_run_with_that_layer_skipped(argmax_run):
    folder, settings = argmax_run["folder"], argmax_run["settings"]
    segmenter = Segmenter.from_report(folder / "run", DropComponent("decoder1", mode="skip"), device="cpu",
                                      picture=False)
    cf = segmenter.counterfactual
    # the recorded settings, as the run resolved them, with the counterfactual's own outputs
    assert segmenter.opts.postprocess == "argmax" and segmenter.opts.overlap == 0.25
    assert segmenter.opts.task == "tumor" and segmenter.opts.format == "nrrd" and not segmenter.opts.components
    result = segmenter.segment(cf.source.inputs, cf.default_output())
    assert result.outputs["dir"] == str(folder / "run" / "counterfactual" / "decoder1-skipped")
    summary = json.loads((folder / "run" / "counterfactual" / "decoder1-skipped" / "counterfactual.json").read_text())
    assert summary == result.report and summary["mode"] == "skip" and summary["chosen_by"] == "given"
    assert set(summary["timings_s"]) >= {"read", "model", "preprocess", "inference", "postprocess", "write", "total"}

    skipped = segment_case(argmax_run["inputs"], folder / "skipped",
                           settings.but(skip_nmf=["decoder1"], components=False)).outputs
    assert np.array_equal(_labels(result.outputs["segmentation"]), _labels(skipped["segmentation"]))
    # the label rule matters on this case: the default rule's run with the layer skipped differs
    hierarchical = segment_case(argmax_run["inputs"], folder / "hierarchical",
                                settings.but(skip_nmf=["decoder1"], components=False, postprocess=None)).outputs
    assert not np.array_equal(_labels(hierarchical["segmentation"]), _labels(skipped["segmentation"]))


def test_the_report_records_the_rule_and_an_incomplete_change_is_refused(argmax_run, tmp_path):
    from LesionFactorizerLib.core.errors import UserError

    run = argmax_run["folder"] / "run"
    report = json.loads((run / "report.json").read_text())
    assert report["settings"]["postprocess"] == "argmax" and report["settings"]["register"] == "auto"
    with pytest.raises(UserError, match="give --layer"):
        Segmenter.from_report(run, DropComponent(mode="skip"), device="cpu")
    with pytest.raises(UserError, match="unknown counterfactual mode"):
        Segmenter.from_report(run, DropComponent("decoder1", 0, mode="erase"), device="cpu")
