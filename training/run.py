"""Train one fold (or all data) with Lightning, and k-fold cross-validation.

Distribution is Lightning's own: ``devices``, ``num_nodes`` and ``strategy`` are passed through
(e.g. ``--devices 4 --strategy ddp``; multi-node under SLURM/torchrun sets the environment as
Lightning documents). Checkpoints are pickle-free (``checkpoint_io``); ``best`` tracks the highest
mean validation Dice and ``last`` the latest state, which ``resume`` continues from.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from LesionFactorizerLib.errors import UserError

from .checkpoint_io import SUFFIX, SafetensorsCheckpointIO
from .config import TrainConfig


@dataclass
class RunResult:
    run_dir: Path
    best: Path | None
    last: Path
    best_score: float | None
    steps: int
    seconds: float
    is_global_zero: bool = True   # False on the other ranks of a multi-process run


def run_dir_for(cfg: TrainConfig, fold: int | None, output_dir: str | Path | None = None) -> Path:
    base = Path(output_dir or cfg.trainer.output_dir)
    return base / cfg.name / (f"fold{fold}" if fold is not None else "all")


def _precision(cfg: TrainConfig, accelerator: str) -> str:
    p = cfg.trainer.precision
    if p != "auto":
        return p
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def train(cfg: TrainConfig, fold: int | None = 0, output_dir: str | Path | None = None,
          resume: bool = False, progress: bool | None = None) -> RunResult:
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .data import SegmentationData
    from .module import SegmentationModule

    t = cfg.trainer
    run_dir = run_dir_for(cfg, fold, output_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / f"last{SUFFIX}"
    if not resume and last.exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another "
                        "--output-dir")
    L.seed_everything(t.seed, workers=True, verbose=False)
    progress = t.progress_bar if progress is None else progress

    # Check data and model before writing anything, so a bad config leaves no half-made run.
    data = SegmentationData(cfg, fold, run_dir, progress=progress)
    data.setup("fit")
    module = SegmentationModule(cfg.to_dict(), fold)
    n_in = module.model.config["kwargs"].get("in_channels")
    if n_in is not None and n_in != len(data.input_names):
        raise UserError(f"model {cfg.model.preset!r} takes {n_in} input channels but the data provide "
                        f"{len(data.input_names)} ({', '.join(data.input_names)}); set model.overrides.in_channels")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "fold": fold}, indent=2), encoding="utf-8")

    class Checkpoint(ModelCheckpoint):
        FILE_EXTENSION = SUFFIX

    callbacks = [LearningRateMonitor(logging_interval="step")]
    best_cb = None
    if fold is not None:
        best_cb = Checkpoint(dirpath=ckpt_dir, filename="best", monitor="val/dice", mode="max",
                             save_top_k=1, save_last=True, auto_insert_metric_name=False)
        callbacks.append(best_cb)
    accelerator = t.accelerator
    trainer = L.Trainer(
        accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=_precision(cfg, accelerator), max_steps=t.max_steps, max_epochs=-1,
        val_check_interval=t.val_every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        log_every_n_steps=min(t.log_every, t.max_steps), callbacks=callbacks,
        logger=[CSVLogger(str(run_dir), name="logs", version=""), TensorBoardLogger(str(run_dir), name="tb", version="")],
        plugins=[SafetensorsCheckpointIO()], enable_progress_bar=progress, enable_model_summary=False,
        default_root_dir=str(run_dir), deterministic=False,
    )
    previous_log = run_dir / "logs" / "metrics.csv"
    kept_log = run_dir / "logs" / "metrics.before-resume.csv"
    if resume and previous_log.is_file():
        previous_log.replace(kept_log)  # Lightning's CSV logger would delete it on start
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume and last.exists() else None)
    seconds = time.perf_counter() - start
    if kept_log.is_file() and trainer.is_global_zero:
        _prepend_csv(kept_log, previous_log)
    trainer.save_checkpoint(str(last), weights_only=False)  # the final state, even when the last step did not validate
    best = Path(best_cb.best_model_path) if best_cb and best_cb.best_model_path else None
    score = float(best_cb.best_model_score) if best_cb and best_cb.best_model_score is not None else None
    result = RunResult(run_dir, best, last, score, int(trainer.global_step), seconds, trainer.is_global_zero)
    if trainer.is_global_zero:
        (run_dir / "result.json").write_text(json.dumps({
            "best": str(best) if best else None, "last": str(last), "best_val_dice": score,
            "steps": result.steps, "seconds": seconds, "fold": fold}, indent=2), encoding="utf-8")
    return result


def _prepend_csv(older: Path, newer: Path) -> None:
    """metrics.csv of a resumed run = the rows logged before the resume, then the new ones."""
    import csv

    from LesionFactorizerLib.evaluation.cohort import write_csv

    rows = []
    for path in (older, newer):
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                rows += list(csv.DictReader(f))
    write_csv(rows, newer)
    older.unlink()


def cross_validate(cfg: TrainConfig, output_dir: str | Path | None = None, folds: list[int] | None = None,
                   resume: bool = False, progress: bool | None = None) -> list[RunResult]:
    """Train every fold in turn (each fold's run is resumable on its own); ``progress`` as in
    :func:`train` (None: the config's ``trainer.progress_bar``)."""
    results = []
    for k in folds if folds is not None else range(cfg.data.folds):
        if resume and (run_dir_for(cfg, k, output_dir) / "result.json").exists():
            continue  # finished fold
        results.append(train(cfg, k, output_dir, resume=resume, progress=progress))
    return results
