"""Exact resume: a run stopped by SIGTERM and resumed ends with the same weights, bit for bit on
the CPU, and the same log rows as the same config run straight through; metrics.csv has every step
once in every resume case. Real Lightning runs on tiny synthetic volumes, augmentation on."""

import csv
import os
import random
import signal

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from LesionFactorizerLib.training import synthetic
from LesionFactorizerLib.training.checkpoint_io import load_checkpoint_file
from LesionFactorizerLib.training.config import CONFIG_DIR, load_config
from LesionFactorizerLib.training.rng_state import capture, restore
from LesionFactorizerLib.training.run import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def msseg2(tmp_path_factory):
    return synthetic.make_msseg2(tmp_path_factory.mktemp("msseg2"), n=5, shape=(20, 20, 20), seed=3)


def _cfg(tmp_path, data_root, out, max_steps=8, model=None):
    cfg = {"base": str(CONFIG_DIR / "ms-new-base.yaml"),
           # augmentation as configured for MS (crops, flips, noise, bias field, …): every draw is random
           "data": {"root": str(data_root), "patch_size": [16, 16, 16], "batch_size": 2, "num_workers": 0,
                    "cache": "memory", "augmentation": {"flip": {"prob": 0.5, "axes": [0, 1, 2]},
                                                        "noise": {"prob": 0.5, "std": 0.1, "variance": None}}},
           "model": model or {"preset": "unet-msseg2", "overrides": {"widths": [8, 8, 8, 8]}},
           "optim": {"lr": 3e-3, "warmup_steps": 2},
           "trainer": {"max_steps": max_steps, "val_every": 3, "log_every": 1, "accelerator": "cpu",
                       "checkpoint_every": 0, "output_dir": str(out), "progress_bar": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return load_config(path)


class TermAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _rows(run_dir):
    with open(run_dir / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def _weights(result):
    return load_checkpoint_file(result.last)["state_dict"]


def _assert_same_run(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"
    ra, rb = _rows(a.run_dir), _rows(b.run_dir)
    assert [(r["step"], r["epoch"], r["train/loss"]) for r in ra] == [(r["step"], r["epoch"], r["train/loss"]) for r in rb]


@pytest.mark.parametrize("model", [None, {"preset": "swin-factorizer-isles", "overrides": {
    "widths": [4, 4, 4, 4, 4], "dropout": 0.2, "pos_embed_size": 1}}], ids=["unet", "factorizer-dropout"])
def test_stopped_and_resumed_equals_the_uninterrupted_run_bit_for_bit(msseg2, tmp_path, model):
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        straight = train(_cfg(tmp_path, msseg2, tmp_path / "a", model=model), 0, progress=False)
        cfg = _cfg(tmp_path, msseg2, tmp_path / "b", model=model)
        first = train(cfg, 0, progress=False, extra_callbacks=[TermAt(4)])   # stopped between validations
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert first.stopped and first.steps == 4
    resumed = train(cfg, 0, resume=True, progress=False)
    assert resumed.steps == straight.steps == 8
    _assert_same_run(straight, resumed)
    assert [int(r["step"]) for r in _rows(resumed.run_dir)] == list(range(8))


def test_a_finished_run_continued_to_more_steps_logs_every_step_once(msseg2, tmp_path):
    done = train(_cfg(tmp_path, msseg2, tmp_path / "runs", max_steps=6), 0, progress=False)
    more = train(_cfg(tmp_path, msseg2, tmp_path / "runs", max_steps=9), 0, resume=True, progress=False)
    assert done.steps == 6 and more.steps == 9
    rows = _rows(more.run_dir)
    assert [int(r["step"]) for r in rows] == list(range(9))
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == sorted(epochs) and all(b - a <= 1 for a, b in zip(epochs, epochs[1:]))


def test_the_random_streams_come_back_exactly():
    row, layout = capture()
    first = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal(), random.gauss(0, 1))
    restore(row, layout)
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal(), random.gauss(0, 1))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2:] == again[2:]
    assert row.dtype == torch.uint8
