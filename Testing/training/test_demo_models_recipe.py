"""`training/demo_models.py`, the script that rebuilds the bundled demo models: its held-out scoring
runs the real pipeline (a card must not fail after an hour of training)."""

import math

import pytest

from LesionFactorizerLib.demo import bundled_demo_model
from LesionFactorizerLib.phantoms.dataset import write_dataset
from LesionFactorizerLib.training.demo_models import REFINE, Recipe, held_out_scores

pytestmark = pytest.mark.slow


def test_held_out_scores_segment_and_score_each_case(tmp_path):
    data = tmp_path / "stroke-test"
    write_dataset("stroke", 2, str(data), seed=9000, spacing=4.0, size=(24, 24, 24))
    held = held_out_scores("stroke", bundled_demo_model("stroke"), data, tmp_path / "work", 4.0)
    assert held["cases"] == 2 and [c["case"] for c in held["per_case"]] and held["spacing_mm"] == 4.0
    for key in ("dice_infarct", "lesion_f1"):
        assert key in held["mean"]
        values = [c[key] for c in held["per_case"]]
        assert all(isinstance(v, float) and (math.isnan(v) or 0.0 <= v <= 1.0) for v in values)
    assert {p.name for p in (tmp_path / "work" / "held-out" / "stroke").iterdir()} == {
        c["case"] for c in held["per_case"]}


def test_a_refined_recipe_scores_and_ships_at_its_last_stage_grid(tmp_path):
    task, (config, spacing, _) = next(iter(REFINE.items()))
    r = Recipe("gpu", task, tmp_path)
    assert r.spacing == spacing and r.final_run == tmp_path / "runs" / config / "fold0"
    assert r.test_dir.parent == r.refine_dir.parent == tmp_path / f"data-{spacing:g}mm"
    cpu = Recipe("cpu", task, tmp_path)   # the cpu recipe's narrower network cannot start the gpu stage
    assert cpu.refine is None and cpu.final_run == cpu.run_dir and cpu.spacing != spacing
