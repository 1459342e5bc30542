"""The thesis recipes in the bundled configs, and the pieces they need: noise variance (7.6.1),
whole-tensor Dice (eq. 8.4), batch 2, epochs of the real fold, and tumor phantoms in the MSD
Task01 layout for the chapter-7 BraTS configs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import main_in_process
import torch

from LesionFactorizerLib.training import folds
from LesionFactorizerLib.training.augment import train_transforms
from LesionFactorizerLib.training.config import AugmentationConfig, load_config
from LesionFactorizerLib.training.losses import SoftDice

pytestmark = pytest.mark.slow


def test_noise_draws_its_variance_from_the_range_the_thesis_gives():
    aug = AugmentationConfig(**{k: None for k in ("affine", "flip", "smooth", "scale_intensity", "shift_intensity",
                                                  "bias_field", "contrast")})
    aug.noise.prob = 1.0
    t = train_transforms([8, 8, 8], None, aug)
    t.set_random_state(0)
    var = [float(t({"image": np.zeros((1, 8, 8, 8), np.float32),
                    "label": np.zeros((1, 8, 8, 8), np.float32)})["image"].var()) for _ in range(200)]
    # variance ~ U(0, 0.1): mean 0.05, reaching 0.1 — not std ~ U(0, 0.1) (variance ≤ 0.01)
    assert 0.04 < np.mean(var) < 0.06 and max(var) > 0.09


def test_whole_tensor_dice_is_eq_8_4():
    g = torch.zeros(1, 4, 6, 6, 6)
    g[:, 0] = 1
    g[:, 0, :2], g[:, 1, :2] = 0, 1
    logits = torch.randn(1, 4, 6, 6, 6)
    p = torch.softmax(logits, 1)
    eq_8_4 = 1 - (2 * (p * g).sum() + 1) / ((p * p).sum() + (g * g).sum() + 1)
    assert SoftDice("softmax", smooth=1.0, per_channel=False)(logits, g) == pytest.approx(float(eq_8_4), abs=1e-6)
    assert SoftDice("softmax", smooth=1.0)(logits, g) != pytest.approx(float(eq_8_4), abs=1e-3)
    assert load_config("resunet-brats2020").loss.dice_per_channel is False


@pytest.mark.parametrize("name", ["swin-factorizer-brats", "swin-factorizer-isles", "preunet-msseg2"])
def test_chapter_6_and_7_configs_train_with_the_thesis_batch_of_two(name):
    cfg = load_config(name)
    assert cfg.data.batch_size * int(cfg.trainer.devices) * cfg.trainer.num_nodes == 2


def test_brats2020_counts_50_epochs_of_the_fold_it_trains_on():
    cfg = load_config("resunet-brats2020")
    n_train = len(folds.split(list(range(369)), 0, cfg.data.folds, cfg.data.fold_seed)[0])  # BraTS 2020: 369
    steps_per_epoch = n_train // cfg.data.batch_size
    assert cfg.trainer.val_every == steps_per_epoch and cfg.trainer.max_steps == 50 * steps_per_epoch
    assert cfg.optim.scheduler == "plateau" and cfg.data.augmentation.noise.std == 0.25


def test_chapter_7_configs_use_the_noise_variance_and_msseg2_the_code_std():
    assert load_config("swin-factorizer-brats").data.augmentation.noise.variance == 0.1
    ms = load_config("preunet-msseg2").data.augmentation.noise
    assert ms.std == 0.1 and ms.variance is None


def test_msd_phantoms_train_the_chapter_7_brats_config(tmp_path):
    """``phantom --layout msd-task01`` writes what ``swin-factorizer-brats`` reads; two steps run."""
    from LesionFactorizerLib.datasets import discover
    from LesionFactorizerLib.training.preprocess import load_case
    from LesionFactorizerLib.training.run import train

    root = tmp_path / "Task01_BrainTumour"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    p = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "phantom", "--task", "tumor", "--n", "5",
                        "--out", str(root), "--layout", "msd-task01", "--spacing", "6", "--size", "24"],
                       capture_output=True, text=True, timeout=300, env=env, encoding="utf-8")
    assert p.returncode == 0, p.stderr[-2000:]
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["numTraining"] == 5 and len(meta["training"]) == 5
    cases = discover("msd-task01", root, "tumor")
    one = load_case(cases[0], ["flair", "t1", "t1ce", "t2"], None, task="tumor")
    assert one["image"].shape[0] == 4 and set(np.unique(one["label"])) <= {0, 1, 2, 3}
    assert {1, 2, 3} <= set(np.unique(np.concatenate([load_case(c, ["flair", "t1", "t1ce", "t2"], None,
                                                                task="tumor")["label"].ravel() for c in cases])))
    again = main_in_process("phantom", "--task", "tumor", "--n", "1", "--out", root, "--layout", "msd-task01")
    assert again.returncode == 2 and "already exists" in again.stderr

    cfg = load_config("swin-factorizer-brats", {
        "data": {"root": str(root), "patch_size": [16, 16, 16], "batch_size": 1, "num_workers": 0,
                 "cache": "memory"},
        "model": {"overrides": {"widths": [8, 16, 16, 16, 16], "head_dim": 4, "window": 4, "pos_embed_size": 2}},
        "trainer": {"max_steps": 2, "val_every": 2, "accelerator": "cpu", "output_dir": str(tmp_path / "runs"),
                    "progress_bar": False}})
    result = train(cfg, 0, progress=False)
    assert result.steps == 2 and result.best_score is not None
