"""The module's side of the component ranking and of "drop this component" (no Slicer, no torch).

The index and summary read here are what the library writes (Testing/pipeline/test_component_ranking.py
checks the library side on real runs); the worker command is checked against the CLI's parser.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("module_lib_importable")


def _index(folder: Path, rankings: dict[str, list[dict]], counts: dict[str, int]) -> Path:
    import SimpleITK as sitk

    layers = []
    for name, count in counts.items():
        image = sitk.GetImageFromArray(np.zeros((3, 4, 5, count), np.float32), isVector=True)
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
        entry = {"layer": name, "stride": 1, "components": count, "file": f"{name}.nrrd", "size": [5, 4, 3],
                 "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                 "max": [1.0] * count}
        if name in rankings:
            entry["ranking"] = rankings[name]
        layers.append(entry)
    (folder / "components.json").write_text(json.dumps({"coordinate_system": "LPS", "layers": layers}), "utf-8")
    return folder


def _row(component, score, coverage=0.5, contrast=2.0):
    return {"component": component, "score": score, "coverage": coverage, "share": 0.3, "contrast": contrast}


def test_the_browser_opens_on_the_best_component_and_explains_its_score(tmp_path):
    from LesionFactorizerModuleLib import components

    _index(tmp_path, {"bridge": [_row(3, 0.41, 0.62, 4.25), _row(0, 0.2), _row(1, 0.1), _row(2, 0.0)],
                      "decoder1": [_row(1, 0.41), _row(0, 0.3)]}, {"bridge": 4, "decoder1": 2})
    layers = components.load_components(tmp_path)
    # a tie goes to the later layer, as the library's components.json "best" does
    assert components.best_component(layers) == ("decoder1", 1)
    bridge = layers["bridge"]
    assert bridge.rank_of(3) == (1, bridge.ranking[0]) and bridge.rank_of(1)[0] == 3
    text = components.score_text(bridge, 3)
    assert text == "rank 1 of 4 in Bridge: score 0.41, covers 62% of the lesion, 4.2x its mean in brain"
    assert components.score_text(None, 0) == ""


def test_the_ranking_must_agree_with_the_layer_and_may_be_absent(tmp_path):
    from LesionFactorizerModuleLib import components

    _index(tmp_path, {}, {"decoder1": 2})
    layers = components.load_components(tmp_path)
    assert components.best_component(layers) is None
    assert components.score_text(layers["decoder1"], 0).startswith("not ranked")
    _index(tmp_path, {"decoder1": [_row(5, 0.3)]}, {"decoder1": 2})
    with pytest.raises(ValueError, match="inconsistent component ranking"):
        components.load_components(tmp_path)


def test_the_library_picks_the_same_best_component(tmp_path):
    from LesionFactorizerLib.pipeline.ranking import best_component
    from LesionFactorizerModuleLib import components

    rankings = {"encoder2": [_row(0, 0.5), _row(1, 0.1)], "bridge": [_row(1, 0.5), _row(0, 0.2)],
                "decoder2": [_row(0, 0.45), _row(1, 0.1)]}
    _index(tmp_path, rankings, {name: 2 for name in rankings})
    entries = json.loads((tmp_path / "components.json").read_text("utf-8"))["layers"]
    lib = best_component(entries)
    assert components.best_component(components.load_components(tmp_path)) == (lib["layer"], lib["component"])


def test_the_counterfactual_line_says_what_changed():
    from LesionFactorizerModuleLib import components

    summary = {"layer": "decoder1", "component": 1, "lesion": {"before_ml": 52.0, "after_ml": 49.5, "delta_ml": -2.5},
               "difference_voxels": {"added": 3, "removed": 316, "relabelled": 0},
               "labels": {"infarct": {"value": 1, "before_ml": 52.0, "after_ml": 49.5, "delta_ml": -2.5}}}
    assert components.counterfactual_text(summary) == (
        "Without Decoder 1 #1: lesion 52.00 -> 49.50 mL (-2.50 mL); 3 voxels added (green), 316 removed (red).")
    summary["difference_voxels"]["relabelled"] = 4
    summary["labels"] = {"NCR": {"delta_ml": 0.5}, "ED": {"delta_ml": 0.0}, "ET": {"delta_ml": -3.0}}
    assert components.counterfactual_text(summary).endswith(
        ", 4 relabelled (yellow); per label (mL): NCR +0.50, ET -3.00.")
    assert [name for _, name, _ in components.DIFFERENCE_SEGMENTS] == ["added", "removed", "relabelled"]


def test_the_worker_command_is_one_the_cli_accepts(tmp_path):
    from LesionFactorizerLib.cli import build_parser
    from LesionFactorizerModuleLib import worker

    request = worker.CounterfactualRequest(tmp_path / "run dir", "bridge", 5, tmp_path / "out",
                                           {"dwi": tmp_path / "in put" / "dwi.nrrd"}, device="cpu")
    argv = worker.build_counterfactual_command("/usr/bin/python3", request)
    assert argv[:4] == ["/usr/bin/python3", "-m", "LesionFactorizerLib", "counterfactual"]
    args = build_parser("counterfactual").parse_args(argv[3:])
    assert (args.result_dir, args.layer, args.component, args.device, args.progress) == (
        str(tmp_path / "run dir"), "bridge", 5, "cpu", "jsonl")
    assert args.output == str(tmp_path / "out") and args.input == [f"dwi={tmp_path / 'in put' / 'dwi.nrrd'}"]
    assert args.picture is False   # Slicer draws the difference itself
    with pytest.raises(ValueError, match="Unknown NMF layer"):
        worker.build_counterfactual_command("python", worker.CounterfactualRequest(tmp_path, "layer9", 0, tmp_path))
