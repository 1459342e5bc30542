"""Training checkpoint → model file (safetensors weights + metadata with training provenance)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.outputspec import OutputSpec

from .checkpoint_io import load_checkpoint_file
from .config import from_dict, input_names
from .module import output_mode


def code_version() -> dict[str, Any]:
    """Library version and, when run from a git checkout, the commit (dirty flag included)."""
    from LesionFactorizerLib import __version__

    info: dict[str, Any] = {"library_version": __version__}
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, encoding="utf-8")
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, encoding="utf-8")
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _validation_metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    """{"best": the validation with the highest mean Dice, "last": the latest validation}, each
    ``{metric: value, "step": n}``, from the run's CSV log."""
    import csv

    path = run_dir / "logs" / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        scored = [r for r in csv.DictReader(f) if r.get("val/dice")]
    if not scored:
        return {}

    def pick(row: dict) -> dict[str, float]:
        # non-finite scores (HD95 with an empty side) are left out: metadata must stay strict JSON
        out: dict[str, float] = {k: float(v) for k, v in row.items()
                                 if k.startswith("val/") and v and math.isfinite(float(v))}
        if row.get("step"):
            out["step"] = int(float(row["step"]))
        return out

    return {"best": pick(max(scored, key=lambda r: float(r["val/dice"]))), "last": pick(scored[-1])}


def export_checkpoint(checkpoint: str | Path, output: str | Path, name: str | None = None,
                      description: str | None = None, license: str = "Apache-2.0", half: bool = False,
                      extra_training: dict[str, Any] | None = None,
                      postprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a model file from a ``*.ckpt.safetensors`` training checkpoint; returns
    ``{"path", "sha256", "metadata"}``. ``postprocessing``: the model's own post-processing values
    (e.g. ``{"mode": "hierarchical", "thresholds": {"WT": 0.5, "TC": 0.4, "ET": 0.45}}``), checked
    as every model file's are."""
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file
    from LesionFactorizerLib.presets import build_model

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint_file(checkpoint)
    hp = ckpt.get("hyper_parameters") or {}
    if "config" not in hp:
        raise UserError(f"{checkpoint} has no training configuration; was it written by 'lesion-factorizer train'?")
    cfg = from_dict(hp["config"])
    model = build_model(cfg.model.preset, **cfg.model.overrides)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{checkpoint}: weights do not match {cfg.model.preset!r} "
                        f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    from LesionFactorizerLib.core.tasks import get_task

    task = get_task(cfg.task)
    mode = output_mode(cfg)
    run_dir = checkpoint.parent.parent
    fold = hp.get("fold")
    training = {
        "dataset": {"format": cfg.data.format, "root": str(cfg.data.root)},
        "fold": fold, "folds": cfg.data.folds, "fold_seed": cfg.data.fold_seed,
        "steps": int(ckpt.get("global_step", 0)),
        "checkpoint": checkpoint.name,
        "validation": _validation_metrics(run_dir),
        "config": cfg.to_dict(),
        "code": code_version(),
        "source": cfg.source,
    }
    training.update(extra_training or {})
    meta = make_metadata(
        cfg.task, model.config, name=name or Path(output).name.removesuffix(".safetensors"),
        inputs=input_names(cfg),   # the checkpoint's own config: the inputs it was trained on, in order
        outputs=OutputSpec.for_task(task, mode).as_outputs(),
        spacing=cfg.data.spacing, patch_size=list(cfg.data.patch_size),
        description=description if description is not None else (cfg.description or cfg.name),
        license=license, training=training, postprocessing=postprocessing,
    )
    sha = save_model_file(output, model, meta, half=half)
    return {"path": str(output), "sha256": sha, "metadata": meta}

