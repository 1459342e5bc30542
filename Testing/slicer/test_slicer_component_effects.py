"""The module's side of the effect ranking (no Slicer, no torch): the browser opens on the largest
effect, shows both rankings, and refuses an effect ranking that does not fit its layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("module_lib_importable")


def _index(folder: Path, layers: dict[str, dict]) -> Path:
    import SimpleITK as sitk

    entries = []
    for name, extra in layers.items():
        count = extra.pop("count")
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, count), np.float32), isVector=True),
                        str(folder / f"{name}.nrrd"))
        entries.append({"layer": name, "stride": 1, "components": count, "file": f"{name}.nrrd", "size": [5, 4, 3],
                        "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
                        "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1], "max": [1.0] * count, **extra})
    (folder / "components.json").write_text(json.dumps({"coordinate_system": "LPS", "layers": entries}), "utf-8")
    return folder


def _score(component, score):
    return {"component": component, "score": score, "coverage": 0.5, "share": 0.3, "contrast": 2.0}


def _effect(component, voxels, delta=0.0):
    return {"component": component, "changed_voxels": voxels, "added": voxels, "removed": 0, "relabelled": 0,
            "changed_ml": voxels * 0.008, "delta_ml": delta, "labels_delta_ml": {}}


def test_the_browser_opens_on_the_largest_effect_and_shows_both_rankings(tmp_path):
    from LesionFactorizerModuleLib import components

    _index(tmp_path, {
        "encoder1": {"count": 2, "ranking": [_score(0, 0.1), _score(1, 0.05)],
                     "effect_ranking": [_effect(1, 300, 2.4), _effect(0, 12)]},
        "decoder1": {"count": 2, "ranking": [_score(1, 0.4), _score(0, 0.3)],
                     "effect_ranking": [_effect(0, 40), _effect(1, 0)]}})
    layers = components.load_components(tmp_path)
    # the overlap ranking's best is decoder1 #1, which changes nothing: the browser opens on the effect
    assert components.best_component(layers) == ("encoder1", 1)
    text = components.score_text(layers["encoder1"], 1)
    assert text.startswith("rank 2 of 2 in Encoder 1: score 0.05")
    assert "effect rank 1 of 2: dropping it changes 300 voxels (2.40 mL; +300 / -0), lesion +2.40 mL" in text
    assert "effect" not in components.score_text(_no_effects(layers["decoder1"]), 1)


def _no_effects(layer):
    layer.effects = []
    return layer


def test_without_any_effect_the_overlap_ranking_decides(tmp_path):
    from LesionFactorizerModuleLib import components

    _index(tmp_path, {"bridge": {"count": 2, "ranking": [_score(1, 0.3), _score(0, 0.1)],
                                 "effect_ranking": [_effect(0, 0), _effect(1, 0)]}})
    assert components.best_component(components.load_components(tmp_path)) == ("bridge", 1)


@pytest.mark.parametrize("rows", [[_effect(5, 3)], [{"component": 0}], "not a list"])
def test_an_effect_ranking_that_does_not_fit_the_layer_is_refused(tmp_path, rows):
    from LesionFactorizerModuleLib import components

    _index(tmp_path, {"bridge": {"count": 2, "effect_ranking": rows}})
    with pytest.raises(ValueError, match="inconsistent"):
        components.load_components(tmp_path)


def test_the_effect_checkbox_reaches_the_worker_and_the_saved_scene(tmp_path):
    """Off by default (it is slow); ticked, the worker is started with --effects, and the parameter
    node holds it, so a saved scene reopens with it ticked."""
    from helpers import run_in_slicer

    out = run_in_slicer(tmp_path, """
        import numpy as np
        ui = widget.ui
        out["default"] = [ui.effectsCheckBox.checked, ui.effectsCheckBox.enabled]
        ui.taskComboBox.setCurrentIndex(ui.taskComboBox.findData("stroke"))
        for i, name in enumerate(("dwi", "adc")):
            node = slicer.util.addVolumeFromArray(np.random.rand(8, 8, 8).astype(np.float32), name=name)
            widget.inputSelectors[i].setCurrentNode(node)
        ui.effectsCheckBox.checked = True
        out["parameter"] = widget.logic.getParameterNode().GetParameter("effects")
        ui.segmentButton.click()
        out["argv"] = list(widget._job.process.args) if widget._job else ui.statusLabel.text
        ui.segmentButton.click()   # Cancel
        harness.run_events_until(lambda: ui.segmentButton.text == "Segment", 60, "cancel")
        slicer.util.saveScene(str(harness.temporary_path() / "saved"))
        ui.effectsCheckBox.checked = False
        out["unticked"] = widget.logic.getParameterNode().GetParameter("effects")
        slicer.util.loadScene(str(harness.temporary_path() / "saved" / "saved.mrml"))
        out["reopened"] = ui.effectsCheckBox.checked
    """)
    assert out["default"] == [False, True]
    assert out["parameter"] == "True" and out["unticked"] == "False" and out["reopened"] is True
    assert "--effects" in out["argv"], out["argv"]
