"""Train one fold (or all data) with Lightning, and k-fold cross-validation.

Distribution is Lightning's own: ``devices``, ``num_nodes`` and ``strategy`` are passed through
(e.g. ``--devices 4 --strategy ddp``; multi-node under SLURM/torchrun sets the environment as
Lightning documents). Checkpoints are pickle-free (``checkpoint_io``); ``best`` tracks the highest
mean validation Dice and ``last`` the latest state, which ``resume`` continues from. ``last`` is
written every ``trainer.checkpoint_every`` steps, at the end, and when the run is stopped: the
first Ctrl+C (SIGINT) or a SIGTERM (a cluster's time limit) finishes the current step, saves
``last`` and ends the run cleanly (a second Ctrl+C aborts at once). A stopped run writes no
``result.json``, so ``cv --resume`` continues it rather than skipping it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from LesionFactorizerLib.core.errors import UserError

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
    stopped: bool = False         # ended early by SIGINT / SIGTERM; continue with resume=True


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
          resume: bool = False, progress: bool | None = None, extra_callbacks=(),
          init: str | Path | None = None) -> RunResult:
    """Train one fold (``None``: all cases, no validation). ``init``: start from the network weights
    of this training checkpoint, with a new optimiser and schedule (warm-up included) — a second
    stage of an earlier run; ``result.json`` records it. ``extra_callbacks``: Lightning callbacks
    of your own (monitoring, early stopping)."""
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
    stage = _load_init(module, init) if init and not resume else {}
    n_in = module.model.config["kwargs"].get("in_channels")
    if n_in is not None and n_in != len(data.input_names):
        raise UserError(f"model {cfg.model.preset!r} takes {n_in} input channels but the data provide "
                        f"{len(data.input_names)} ({', '.join(data.input_names)}); set model.overrides.in_channels")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "fold": fold}, indent=2), encoding="utf-8")

    class Checkpoint(ModelCheckpoint):
        FILE_EXTENSION = SUFFIX

    from .rng_state import RngStates

    latest = LatestState(last, t.checkpoint_every)
    callbacks = [LearningRateMonitor(logging_interval="step"), RngStates(), latest, *extra_callbacks]
    best_cb = None
    if fold is not None:
        best_cb = Checkpoint(dirpath=ckpt_dir, filename="best", monitor="val/dice", mode="max",
                             save_top_k=1, save_last=False, auto_insert_metric_name=False)
        callbacks.insert(0, best_cb)
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
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    logs = run_dir / "logs"
    if resume and trainer.is_global_zero:
        _set_aside_log(logs)      # Lightning's CSV logger would delete metrics.csv on start
    start = time.perf_counter()
    try:
        with latest.signals():
            try:
                trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume and last.exists() else None)
                latest.stopped = False    # fit ran to max_steps: a stop asked in the last step changed nothing
            except (SIGTERMException, StopRequested):
                if not latest.stopped:
                    raise
        if not latest.stopped:
            trainer.save_checkpoint(str(last), weights_only=False)  # the final state, even when the last step did not validate
    finally:
        if trainer.is_global_zero:
            _join_logs(logs)      # also after a crash: the next resume must not lose these rows
    seconds = time.perf_counter() - start
    best = Path(best_cb.best_model_path) if best_cb and best_cb.best_model_path else None
    score = float(best_cb.best_model_score) if best_cb and best_cb.best_model_score is not None else None
    result = RunResult(run_dir, best, last, score, int(trainer.global_step), seconds, trainer.is_global_zero,
                       latest.stopped)
    if trainer.is_global_zero and not latest.stopped:
        import torch

        stage["device"] = torch.cuda.get_device_name() if trainer.strategy.root_device.type == "cuda" else "CPU"
        (run_dir / "result.json").write_text(json.dumps({
            "best": str(best) if best else None, "last": str(last), "best_val_dice": score,
            "steps": result.steps + stage.get("init_step", 0), "seconds": seconds, "fold": fold, **stage},
            indent=2), encoding="utf-8")
    return result


def _load_init(module, init: str | Path) -> dict:
    """Load the network weights of checkpoint ``init`` into ``module``; returns what result.json
    records of it: the checkpoint, its step, and the stages behind it ("N steps in M min on …",
    earlier stages first, from its run's result.json) for model cards."""
    from .checkpoint_io import load_checkpoint_file

    ckpt = load_checkpoint_file(init)
    weights = {k[len("model."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")}
    try:
        module.model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"--init {init}: its weights do not fit model {module.cfg.model.preset!r} "
                        f"({str(exc).splitlines()[0]})") from None
    history = None
    result = Path(init).parent.parent / "result.json"
    if result.is_file():
        r = json.loads(result.read_text(encoding="utf-8"))
        done = f"{r.get('steps')} steps in {r.get('seconds', 0) / 60:.0f} min on {r.get('device', 'CPU')}"
        history = f"{r['history']}, then {done}" if r.get("history") else done
    return {"init": str(init), "init_step": int(ckpt.get("global_step", 0)), "history": history}


KEPT_LOG = "metrics.before-resume.csv"


def _set_aside_log(logs: Path) -> None:
    """Before a resumed run starts: move metrics.csv into the kept log, appending to what an earlier
    interrupted resume left there instead of overwriting it."""
    current, kept = logs / "metrics.csv", logs / KEPT_LOG
    if not current.is_file():
        return
    if kept.is_file():
        _write_joined(kept, current, kept)
        current.unlink()
    else:
        current.replace(kept)


def _join_logs(logs: Path) -> None:
    """metrics.csv of a resumed run = the kept rows, then the new ones."""
    kept = logs / KEPT_LOG
    if kept.is_file():
        _write_joined(kept, logs / "metrics.csv", logs / "metrics.csv")
        kept.unlink()


def _write_joined(older: Path, newer: Path, out: Path) -> None:
    """Rows of ``older`` logged before the first step of ``newer``, then ``newer``'s rows: a run
    resumed from the state of step k logs steps k, k+1, … again, and those rows replace the old ones."""
    import csv

    from LesionFactorizerLib.evaluation.cohort import write_csv

    def rows(path: Path) -> list[dict]:
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    old, new = rows(older), rows(newer)
    steps = [int(r["step"]) for r in new if r.get("step")]
    if steps:
        old = [r for r in old if r.get("step") and int(r["step"]) < min(steps)]
    write_csv(old + new, out)


def start_of_next_epoch(checkpoint: dict) -> None:
    """A state saved after an epoch's last batch (at a stop, or after fit ended) made the start of
    the next epoch, in place. Lightning restores such a state by finishing that epoch again: the
    next epoch then ended a batch early, or the epoch count jumped by 2."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    batches, epochs = loops.get("epoch_loop.batch_progress"), loops.get("epoch_progress")
    if not batches or not epochs or not batches.get("is_last_batch"):
        return
    started = int(epochs["total"]["ready"])
    for part in ("total", "current"):
        epochs[part] = {k: started for k in epochs[part]}
    batches["is_last_batch"] = False

    def zero_current(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "current" and isinstance(v, dict):
                    node[k] = {f: 0 for f in v}
                else:
                    zero_current(v)

    for key, value in loops.items():
        if key.startswith("epoch_loop.") and not key.startswith("epoch_loop.val_loop"):
            zero_current(value)


class StopRequested(Exception):
    """Ends ``fit`` after Ctrl+C, once the latest state is saved."""


class LatestState(Callback):
    """Writes ``last`` every ``every`` steps and when the run is asked to stop (SIGINT, SIGTERM).

    SIGINT is handled here (a stop at the end of the step, agreed by every DDP rank, without the
    validation Lightning runs before an early stop);
    SIGTERM is Lightning's (it raises at the end of the step, after the ranks agree), and the
    state is saved in :meth:`on_exception`."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = path, int(every)
        self.stopped = False
        self._asked = False
        self._saved_step = -1

    def _save(self, trainer) -> None:
        if trainer.global_step != self._saved_step:
            trainer.save_checkpoint(str(self.path), weights_only=False)
            self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        asked = self._asked
        if trainer.world_size > 1:
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if asked:
            self._stop(trainer, "interrupted")
        elif self.every and trainer.global_step % self.every == 0:
            self._save(trainer)

    # Stop before the next step or validation, once this step's log row is written (Lightning logs
    # it after on_train_batch_end). Not trainer.should_stop, which would run a validation first.
    def on_train_batch_start(self, trainer, *args) -> None:
        if self.stopped:
            raise StopRequested
        # Log rows are numbered by Lightning's count of stepped batches, which equals the optimiser
        # step before every batch of an uninterrupted run; its restart bookkeeping left it one ahead
        # after resuming a finished run (a step without a row, every later row one too high)
        trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.stopped:
            raise StopRequested

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        start_of_next_epoch(checkpoint)

    def on_exception(self, trainer, pl_module, exception) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self._stop(trainer, "SIGTERM")

    def _stop(self, trainer, why: str) -> None:
        import sys

        self._save(trainer)
        self.stopped = True
        if trainer.is_global_zero:
            sys.stderr.write(f"{why}: saved the state of step {trainer.global_step} to {self.path}; "
                             "continue with --resume\n")

    @contextlib.contextmanager
    def signals(self):
        """First Ctrl+C: stop after this step (saving ``last``); a second one aborts at once."""
        import signal
        import sys
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask(signum, frame):
            if self._asked:
                raise KeyboardInterrupt
            self._asked = True
            sys.stderr.write("\nstopping after this step and saving the latest state "
                             "(Ctrl+C again to abort without saving)\n")

        previous = signal.signal(signal.SIGINT, ask)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def cross_validate(cfg: TrainConfig, output_dir: str | Path | None = None, folds: list[int] | None = None,
                   resume: bool = False, progress: bool | None = None) -> list[RunResult]:
    """Train every fold in turn (each fold's run is resumable on its own); ``progress`` as in
    :func:`train` (None: the config's ``trainer.progress_bar``)."""
    results = []
    for k in folds if folds is not None else range(cfg.data.folds):
        if resume and (run_dir_for(cfg, k, output_dir) / "result.json").exists():
            continue  # finished fold
        results.append(train(cfg, k, output_dir, resume=resume, progress=progress))
        if results[-1].stopped:
            break             # stopped by a signal: the folds after it are not started
    return results
