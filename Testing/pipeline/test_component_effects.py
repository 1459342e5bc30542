"""Components ranked by their effect on the lesion (issue 28): each component's labels from the
branched forward equal what the ``counterfactual`` command writes with that component dropped, and
the group counterfactuals (keep one component, short-circuit a layer) mean what they say.

Real files throughout: the bundled stroke sample cropped around its lesion, the bundled demo model,
the real ``segment`` stages and the ``counterfactual`` command (in process and as a subprocess).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import HALF_MM, REPO, cropped_sample, cropped_stroke_sample

from LesionFactorizerLib import build_model
from LesionFactorizerLib.demo import bundled_demo_model
from LesionFactorizerLib.modelfile import load_model_file
from LesionFactorizerLib.nn.factorizer import plain_forward
from LesionFactorizerLib.nn.matricize import make_matricize
from LesionFactorizerLib.nn.nmf import NMF
from LesionFactorizerLib.pipeline.segment import run_counterfactual
from LesionFactorizerLib.pipeline.effects import component_costs, stage_weight
from LesionFactorizerLib.pipeline.groups import kept
from LesionFactorizerLib.pipeline.progress import STAGES, Progress
from LesionFactorizerLib.pipeline.segment import segment_case
from LesionFactorizerLib.core.settings import SegmentSettings

pytestmark = pytest.mark.slow

LAYERS = ["decoder2", "decoder1"]


def test_keep_leaves_only_that_component():
    heads, head_dim, rank = 3, 4, 2
    z = torch.rand(2, 8, 8, 8, heads * head_dim, dtype=torch.float64)
    nmf = NMF(rank=rank, iters=4)
    mats, _ = make_matricize("local", head_dim, 4).matricize(z)
    u, v = nmf.decompose(mats)
    full = u @ v.transpose(-1, -2)
    total = torch.zeros_like(full)
    for component in range(heads * rank):
        nmf.keep = (heads, component)
        uk, vk = nmf.decompose(mats)
        nmf.keep = None
        nmf.drop = (heads, component)
        ud, _ = nmf.decompose(mats)
        nmf.drop = None
        torch.testing.assert_close(vk, v)
        alone = uk @ vk.transpose(-1, -2)
        torch.testing.assert_close(full - ud @ v.transpose(-1, -2), alone)   # keep = what drop removes
        total += alone
    torch.testing.assert_close(total, full)   # the components' terms add up to the reconstruction


def test_keeping_one_component_is_the_same_in_both_forward_paths():
    torch.manual_seed(0)
    model = build_model("swin-factorizer-isles", widths=(8, 16, 32, 64, 128)).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        base = model(x)
        with kept(model, "decoder2", 1):
            fast = model(x)
            with plain_forward(model):
                plain = model(x)
        with pytest.raises(ValueError, match="components 0 to"):
            with kept(model, "decoder2", 99):
                pass
    assert model.nmf_layers()["decoder2"].nmf.keep is None
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert (fast - base).abs().max() > 1e-3


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The stroke sample cropped to ±36 mm around its lesion; effects of two decoder layers."""
    folder = tmp_path_factory.mktemp("effects")
    inputs = cropped_stroke_sample(folder, HALF_MM)
    model = str(bundled_demo_model("stroke"))

    def run(out, progress=None, **extra):
        segment_case(inputs, str(folder / out), SegmentSettings(models=[model], device="cpu", format="nrrd", **extra),
                     progress)
        return folder / out

    events = io.StringIO()
    effects = run("effects", Progress("jsonl", stream=events, min_interval=0.0), component_layers=LAYERS, effects=True)
    return {"folder": folder, "inputs": inputs, "model": model, "run": run, "effects": effects,
            "events": [json.loads(line) for line in events.getvalue().splitlines()]}


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def test_each_components_effect_is_what_its_counterfactual_writes(case):
    out = case["effects"]
    report = _report(out)
    index = json.loads((out / "components" / "components.json").read_text(encoding="utf-8"))
    assert report["components"] == index["layers"]
    assert "timings_s" in report and report["timings_s"]["effects"] > 0
    seen = 0
    for entry in index["layers"]:
        rows = entry["effect_ranking"]
        assert sorted(r["component"] for r in rows) == list(range(entry["components"]))
        assert [r["changed_voxels"] for r in rows] == sorted((r["changed_voxels"] for r in rows), reverse=True)
        for row in rows:
            summary = _counterfactual_summary(out, entry["layer"], row["component"])
            assert summary["difference_voxels"] == {k: row[k] for k in ("added", "removed", "relabelled")}
            assert summary["lesion"]["delta_ml"] == pytest.approx(row["delta_ml"], abs=1e-3)
            assert {n: v["delta_ml"] for n, v in summary["labels"].items()} == pytest.approx(row["labels_delta_ml"],
                                                                                          abs=1e-3)
            seen += row["changed_voxels"]
        # so the top of the ranking changes the lesion at least as much as any other component of its layer
        assert rows[0]["changed_voxels"] == max(r["changed_voxels"] for r in rows)
    assert seen > 0, "some component of these layers must change the demo model's lesion"
    best = index["best_effect"]
    tops = {e["layer"]: e["effect_ranking"][0] for e in index["layers"]}
    assert best["changed_voxels"] == max(r["changed_voxels"] for r in tops.values())
    assert tops[best["layer"]]["component"] == best["component"] and report["components_best_effect"] == best


def test_the_bar_gives_the_effect_ranking_the_share_its_cost_implies(case):
    """Monotone; the effects stage spans the share of the bar its weight (derived from the network:
    components × the work downstream of their layer) gives it beside the inference stage, and the
    stages after it still end the bar at 1 (``done`` then shows 1, as the command line calls it)."""
    progress = [e for e in case["events"] if e["event"] == "progress"]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions)
    spans = {}
    for e in progress:
        low, high = spans.get(e["stage"], (e["fraction"], e["fraction"]))
        spans[e["stage"]] = (min(low, e["fraction"]), max(high, e["fraction"]))
    stages = [e["stage"] for e in progress]
    following = {a: b for a, b in zip(stages, stages[1:]) if a != b}   # where each stage ends: the next begins
    share = {name: spans[following[name]][0] - spans[name][0] for name in ("inference", "effects")}
    weight = stage_weight(component_costs(load_model_file(case["model"]).model, LAYERS))
    assert share["effects"] / share["inference"] == pytest.approx(weight / dict(STAGES)["inference"], rel=0.01)
    assert len({e["fraction"] for e in progress if e["stage"] == "effects"}) > 1   # it moves during the stage
    weights = dict(STAGES)
    left = {name: 1.0 - spans[name][0] for name in ("components", "write")}
    assert left["components"] / left["write"] == pytest.approx(
        (weights["components"] + weights["write"]) / weights["write"], rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["tumor", "ms-new"])
def test_the_top_effect_is_the_largest_counterfactual_on_the_other_samples(task, tmp_path):
    """The other two bundled samples (cropped around their lesion), their decoder1: each component's
    effect is its counterfactual's, so the effect ranking's top changes the lesion at least as much
    as any other component of the layer."""
    inputs = cropped_sample(task, tmp_path, HALF_MM)
    out = tmp_path / "effects"
    segment_case(inputs, str(out), SegmentSettings(models=[str(bundled_demo_model(task))], device="cpu", format="nrrd",
                                                   component_layers=["decoder1"], effects=True))
    rows = _report(out)["components"][0]["effect_ranking"]
    written = {r["component"]: sum(_counterfactual_summary(out, "decoder1", r["component"])
                                    ["difference_voxels"].values()) for r in rows}
    assert {r["component"]: r["changed_voxels"] for r in rows} == written
    assert written[rows[0]["component"]] == max(written.values())


def _counterfactual_summary(out: Path, layer: str, component: int) -> dict:
    outputs = run_counterfactual(out, layer, component, device="cpu", overwrite=True, picture=False)
    return json.loads(Path(outputs["summary"]).read_text(encoding="utf-8"))


def test_the_overlap_ranking_is_the_same_with_or_without_effects(case):
    plain = case["run"]("plain", component_layers=LAYERS)
    with_effects, without = _report(case["effects"]), _report(plain)
    assert with_effects["components_best"] == without["components_best"]
    assert [e["ranking"] for e in with_effects["components"]] == [e["ranking"] for e in without["components"]]
    assert "components_best_effect" not in without and "effect_ranking" not in without["components"][0]
    for name in ("segmentation.nrrd",):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / name))) for f in (case["effects"], plain))
        assert np.array_equal(a, b)


def _cli(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "counterfactual", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env)


def test_counterfactual_defaults_to_the_largest_effect_and_says_so(case):
    out = case["effects"]
    best = _report(out)["components_best_effect"]
    proc = _cli(out, "--device", "cpu", "--no-picture", "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "largest effect" in proc.stderr
    summary = json.loads((out / "counterfactual" / f"{best['layer']}-{best['component']}" /
                          "counterfactual.json").read_text(encoding="utf-8"))
    assert summary["chosen_by"] == "effect" and summary["effect"]["changed_voxels"] == best["changed_voxels"]


def test_short_circuiting_a_layer_is_segmenting_with_it_skipped(case):
    out = case["effects"]
    proc = _cli(out, "--layer", "decoder1", "--whole-layer", "--device", "cpu", "--no-picture",
                "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = Path(json.loads(proc.stdout)["dir"])
    assert folder == out / "counterfactual" / "decoder1-skipped"
    summary = json.loads((folder / "counterfactual.json").read_text(encoding="utf-8"))
    assert summary["mode"] == "skip" and summary["component"] is None
    skipped = case["run"]("skipped", skip_nmf=["decoder1"])
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / "segmentation.nrrd"))) for f in (folder, skipped))
    assert np.array_equal(a, b)


def test_keeping_one_of_two_components_is_dropping_the_other(case):
    """decoder1 of the demo model has two components: keeping #0 leaves what dropping #1 leaves.
    Both through the PyTorch arithmetic (the compiled kernel can drop a component, not keep one)."""
    out = case["effects"]
    env = {"LESION_FACTORIZER_NATIVE": "0"}
    runs = {}
    for args in (["--keep", "--component", "0"], ["--component", "1"]):
        proc = _cli(out, "--layer", "decoder1", *args, "--device", "cpu", "--no-picture", "--progress", "none",
                    "--overwrite", env_extra=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[args[0]] = Path(json.loads(proc.stdout)["dir"])
    assert runs["--keep"].name == "decoder1-keep-0"
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / "segmentation.nrrd"))) for f in runs.values())
    assert np.array_equal(a, b)
    assert json.loads((runs["--keep"] / "counterfactual.json").read_text(encoding="utf-8"))["mode"] == "keep"


def _effect_row(component, voxels):
    return {"component": component, "changed_voxels": voxels, "added": voxels, "removed": 0, "relabelled": 0,
            "changed_ml": voxels / 1000, "delta_ml": voxels / 1000, "labels_delta_ml": {}}


def test_the_overview_opens_on_the_largest_effect_and_the_overlap_ranking_stays(tmp_path):
    from LesionFactorizerLib.pipeline.components import write_components
    from LesionFactorizerLib.pipeline.geometry import Geometry
    from LesionFactorizerLib.pipeline.preprocessing import Prepared
    from LesionFactorizerLib.pipeline.ranking import Masks

    grid = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    prep = Prepared(None, grid, grid, (0, 0, 0), (8, 8, 8), (8, 8, 8), True, [])
    lesion, brain = np.zeros((8, 8, 8), np.float32), np.ones((8, 8, 8), np.float32)
    lesion[2:5, 2:5, 2:5] = 1
    rng = np.random.default_rng(0)
    comps = {"encoder1": rng.random((2, 8, 8, 8), dtype=np.float32),
             "decoder1": np.stack([lesion + 0.01, rng.random((8, 8, 8), dtype=np.float32)])}
    order, strides = ["encoder1", "decoder1"], {"encoder1": 1, "decoder1": 1}
    effects = {"encoder1": {"ranking": [_effect_row(1, 50), _effect_row(0, 3)], "seconds": 1.0},
               "decoder1": {"ranking": [_effect_row(0, 7), _effect_row(1, 0)], "seconds": 0.5}}
    runs = {}
    for name, extra in (("plain", None), ("effects", effects)):
        entries, shown = write_components(prep, comps, strides, tmp_path / name, order,
                                          masks=Masks(lesion, brain), effects=extra)
        runs[name] = (json.loads((tmp_path / name / "components.json").read_text(encoding="utf-8")), shown)
    plain, with_effects = runs["plain"][0], runs["effects"][0]
    assert plain["best"] == with_effects["best"] == {"layer": "decoder1", "component": 0,
                                                     "score": plain["layers"][1]["ranking"][0]["score"]}
    assert [e["ranking"] for e in plain["layers"]] == [e["ranking"] for e in with_effects["layers"]]
    assert runs["plain"][1][0] == "decoder1"                       # the overlap's best layer
    layer, _image, picks = runs["effects"][1]
    assert layer == "encoder1" and [c for c, _ in picks] == [1, 0]   # the largest effect, then the next
    assert "50 vox" in picks[0][1] and "overlap #" in picks[0][1]
    assert with_effects["best_effect"] == {"layer": "encoder1", "component": 1, "changed_voxels": 50,
                                           "changed_ml": 0.05, "delta_ml": 0.05}
    assert with_effects["layers"][0]["effects_s"] == 1.0 and "effect_ranking" not in plain["layers"][0]


def test_with_mirror_tta_every_pass_is_branched_the_same_way(case):
    out = case["run"]("tta", component_layers=["decoder1"], effects=True, tta=True)
    entry = _report(out)["components"][0]
    assert entry["layer"] == "decoder1" and _report(out)["settings"]["passes"] == 4
    for row in entry["effect_ranking"]:
        summary = _counterfactual_summary(out, "decoder1", row["component"])
        assert summary["difference_voxels"] == {k: row[k] for k in ("added", "removed", "relabelled")}
