"""What ``cv`` leaves beside its folds: each finished fold's model file and one summary.

``<output_dir>/<experiment>/models/fold<k>.safetensors`` (the fold's best-validation checkpoint,
or its last where it kept no best) and, beside them, ``cv-summary.json`` / ``cv-summary.csv``:
one row per fold with its validation scores at that checkpoint, then the mean and SD over the
folds of every score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .checkpoint_io import SUFFIX
from .config import TrainConfig


def export_folds(cfg: TrainConfig, folds, output_dir: str | Path | None = None) -> dict:
    """Export every finished fold of ``folds`` and write the summary; returns the summary."""
    from LesionFactorizerLib.evaluation.cohort import write_csv

    from .export import export_checkpoint
    from .run import run_dir_for

    base = run_dir_for(cfg, 0, output_dir).parent
    models = base / "models"
    models.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in folds:
        run_dir = run_dir_for(cfg, k, output_dir)
        if not (run_dir / "result.json").is_file():
            continue            # not finished (stopped, or not run): nothing to export
        ckpt = run_dir / "checkpoints" / f"best{SUFFIX}"
        if not ckpt.is_file():
            ckpt = run_dir / "checkpoints" / f"last{SUFFIX}"
        out = models / f"fold{k}.safetensors"
        res = export_checkpoint(ckpt, out, name=f"{cfg.name}-fold{k}")
        scores = res["metadata"]["training"]["validation"].get("best" if ckpt.name.startswith("best") else "last", {})
        rows.append({"fold": k, "model": str(out), "checkpoint": ckpt.name, "steps": res["metadata"]["training"]["steps"],
                     **{key: value for key, value in scores.items() if key != "step"}})
    metrics = [key for key in (rows[0] if rows else {}) if key.startswith("val/")]
    summary = {"experiment": cfg.name, "folds": rows, "mean": {}, "sd": {}}
    for key in metrics:
        values = [r[key] for r in rows if isinstance(r.get(key), float) and math.isfinite(r[key])]
        summary["mean"][key] = float(np.mean(values)) if values else None
        summary["sd"][key] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    (models / "cv-summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    table = rows + [{"fold": stat, **{k: (v if v is not None else float("nan")) for k, v in summary[stat].items()}}
                    for stat in ("mean", "sd")]
    write_csv(table, models / "cv-summary.csv")
    summary["path"] = str(models / "cv-summary.json")
    return summary
