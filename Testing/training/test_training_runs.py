"""Training a long run can trust: latest state on a cadence and on SIGINT, resume without losing or
duplicating log rows, the plateau schedule stepped per validation, rank-distinct augmentation and
cohort-exact validation under DDP (2 CPU processes, gloo).

Real runs of the Lightning trainer on tiny synthetic volumes; no step is timed.
"""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import Callback

from LesionFactorizerLib.training import synthetic
from LesionFactorizerLib.training.checkpoint_io import load_checkpoint_file
from LesionFactorizerLib.training.config import CONFIG_DIR, load_config
from LesionFactorizerLib.training.run import train

pytestmark = pytest.mark.slow

NO_AUG = {k: None for k in ("affine", "flip", "noise", "smooth", "scale_intensity", "shift_intensity",
                            "bias_field", "contrast")}
UNET = {"preset": "unet-msseg2", "overrides": {"widths": [8, 8, 8, 8]}}


def _config(path: Path, data_root: Path, out: Path, data: dict | None = None, **sections) -> Path:
    cfg = {"base": str(CONFIG_DIR / "ms-new-base.yaml"),
           "data": {"root": str(data_root), "patch_size": [16, 16, 16], "batch_size": 1, "num_workers": 0,
                    "cache": "memory", "augmentation": NO_AUG, **(data or {})},
           "model": UNET,
           "optim": {"lr": 3e-3, "warmup_steps": 0, **sections.pop("optim", {})},
           "trainer": {"max_steps": 8, "val_every": 8, "log_every": 1, "accelerator": "cpu",
                       "output_dir": str(out), "progress_bar": False, **sections.pop("trainer", {})}}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _steps(run_dir: Path) -> list[int]:
    with open(run_dir / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


class At(Callback):
    """Does ``action`` once, at the end of optimiser step ``step`` (1-based)."""

    def __init__(self, step: int, action):
        self.step, self.action = step, action

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            self.action()


def _crash():
    raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def msseg2(tmp_path_factory):
    return synthetic.make_msseg2(tmp_path_factory.mktemp("msseg2"), n=5, shape=(20, 20, 20), seed=3)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_latest_state_and_resume_finishes_the_run(msseg2, tmp_path, capfd, signum):
    cfg = load_config(_config(tmp_path / "c.yaml", msseg2, tmp_path / "runs", trainer={"checkpoint_every": 0}))
    # a fresh process's handler: an in-process `segment` test before this one may have left its own
    previous = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    try:
        before = signal.getsignal(signum)
        first = train(cfg, 0, progress=False, extra_callbacks=[At(3, lambda: os.kill(os.getpid(), signum))])
        assert signal.getsignal(signum) is before               # the handler is put back
    finally:
        signal.signal(signum, previous)
    # Ctrl+C / a cluster's SIGTERM: the step in progress finishes, the state is saved, and no
    # result.json says the run is finished
    assert first.stopped and 3 <= first.steps < 8
    assert load_checkpoint_file(first.last)["global_step"] == first.steps
    assert not (first.run_dir / "result.json").exists()
    assert "continue with --resume" in capfd.readouterr().err
    again = train(cfg, 0, resume=True, progress=False)
    assert not again.stopped and again.steps == 8
    assert _steps(again.run_dir) == list(range(8))


def test_latest_state_on_a_cadence_and_logs_kept_across_crashed_resumes(msseg2, tmp_path):
    cfg = load_config(_config(tmp_path / "c.yaml", msseg2, tmp_path / "runs",
                              trainer={"checkpoint_every": 2, "max_steps": 10, "val_every": 10}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, 0, progress=False, extra_callbacks=[At(5, _crash)])
    last = Path(tmp_path / "runs" / "c" / "fold0" / "checkpoints" / "last.ckpt.safetensors")
    assert load_checkpoint_file(last)["global_step"] == 4           # the cadence, not validation, wrote it
    with pytest.raises(RuntimeError, match="simulated crash"):        # the resumed run crashes too
        train(cfg, 0, resume=True, progress=False, extra_callbacks=[At(7, _crash)])
    assert load_checkpoint_file(last)["global_step"] == 6
    done = train(cfg, 0, resume=True, progress=False)
    assert done.steps == 10
    # every step exactly once: rows logged after the saved state were replaced, none was lost
    assert _steps(done.run_dir) == list(range(10))
    assert not (done.run_dir / "logs" / "metrics.before-resume.csv").exists()


def test_plateau_schedule_steps_once_per_validation_even_past_an_epoch(msseg2, tmp_path):
    # an epoch is 4 batches (4 training cases, batch 1); validating every 5 steps, Lightning's own
    # stepping (frequency counted against the batch index within the epoch) never fires
    cfg = load_config(_config(tmp_path / "c.yaml", msseg2, tmp_path / "runs",
                              optim={"optimizer": "adam", "lr": 1e-7, "scheduler": "plateau",
                                     "plateau_factor": 0.5, "plateau_patience": 0},
                              trainer={"max_steps": 10, "val_every": 5}))
    result = train(cfg, 0, progress=False)
    ckpt = load_checkpoint_file(result.last)
    lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    with open(result.run_dir / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        dice = [float(r["val/dice"]) for r in csv.DictReader(f) if r.get("val/dice")]
    # stepped once per validation, with that validation's Dice: patience 0 halves the rate unless
    # the second validation improved on the first (a tiny lr barely moves the Dice)
    assert len(dice) == 2 and ckpt["plateau_scheduler"]["last_epoch"] == 2
    improved = dice[1] > dice[0] * (1 + 1e-4)
    assert lr == pytest.approx(1e-7 if improved else 0.5e-7)
    assert ckpt["plateau_scheduler"]["best"] == pytest.approx(max(dice), abs=1e-6)


DDP_DRIVER = '''
import hashlib, json, sys
from pathlib import Path
from lightning.pytorch.callbacks import Callback
from LesionFactorizerLib.training.config import load_config
from LesionFactorizerLib.training.run import train

out = Path(sys.argv[2])

class FirstBatches(Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx < 2:
            digest = hashlib.sha1(batch["image"].numpy().tobytes()).hexdigest()
            with open(out / f"rank{trainer.global_rank}.txt", "a") as f:
                f.write(digest + "\\n")

train(load_config(sys.argv[1]), 0, progress=False, extra_callbacks=[FirstBatches()])
'''


def test_ddp_ranks_augment_differently_and_validate_each_case_once(tmp_path):
    """Two CPU processes (gloo). Every training case is the same volume, so the ranks' patches can
    only differ through their random crops and augmentation; 3 validation cases on 2 ranks make the
    sampler pad one rank with a duplicate."""
    from LesionFactorizerLib.training.data import SegmentationData
    from LesionFactorizerLib.training.module import SegmentationModule, mean_scores

    from LesionFactorizerLib.datasets import msseg2_files

    data = synthetic.make_msseg2(tmp_path / "d", n=4, shape=(20, 20, 20), seed=5)

    def files(i):
        return {k: str(data / f"{v}.nii.gz") for k, v in msseg2_files(f"{i:03d}").items()}

    rows = [{"case_id": f"train{i}", **files(0), "fold": 1} for i in range(4)]     # one volume, four times
    rows += [{"case_id": f"val{i}", **files(i), "fold": 0} for i in (1, 2, 3)]
    datalist = tmp_path / "list.csv"
    with open(datalist, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    aug = {**NO_AUG, "flip": {"prob": 0.5, "axes": [0, 1, 2]}, "noise": {"prob": 1.0, "std": None, "variance": 0.1}}
    cfg_path = _config(tmp_path / "ddp.yaml", datalist, tmp_path / "runs",
                       data={"format": "datalist", "augmentation": aug, "folds": 2},
                       trainer={"max_steps": 2, "val_every": 2, "devices": 2, "strategy": "ddp"})
    (tmp_path / "seen").mkdir()
    (tmp_path / "driver.py").write_text(DDP_DRIVER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    p = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(cfg_path), str(tmp_path / "seen")],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, encoding="utf-8")
    assert p.returncode == 0, p.stderr[-3000:]
    seen = [(tmp_path / "seen" / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2
    assert not set(seen[0]) & set(seen[1])          # no patch is drawn identically on both ranks

    run_dir = tmp_path / "runs" / "ddp" / "fold0"
    with open(run_dir / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        logged = [r for r in csv.DictReader(f) if r.get("val/dice")]
    assert len(logged) == 1 and float(logged[0]["val/cases"]) == 3
    # the same weights validated in one process, case by case: the cohort mean, no duplicate
    cfg = load_config(cfg_path)
    module = SegmentationModule(cfg.to_dict(), 0)
    ckpt = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt.safetensors")
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    dm = SegmentationData(cfg, 0)
    dm.setup("fit")
    import torch

    with torch.no_grad():
        for batch in dm.val_dataloader():
            module.validation_step(batch, 0)
    assert len(module._val_scores) == 3
    means = mean_scores(list(module._val_scores.values()))
    assert float(logged[0]["val/dice_new_lesion"]) == pytest.approx(means["dice_new_lesion"], abs=1e-6)
