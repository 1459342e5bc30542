"""Packs: a fold split's preprocessed cases in one file, a data source of the one trainer.

Real files: synthetic ISLES'22 cases written by the training package, packed through the training
preprocessing, trained by the real ``lesion-factorizer train --pack`` in a subprocess, exported and
loaded by the inference pipeline.
"""

import csv
import re
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import main_in_process
import yaml

from LesionFactorizerLib.modelfile import load_model_file
from LesionFactorizerLib.training import synthetic
from LesionFactorizerLib.training.config import CONFIG_DIR, load_config
from LesionFactorizerLib.training.packed import PackStore, load_stores, pack, pack_meta
from LesionFactorizerLib.training.preprocess import load_case

pytestmark = pytest.mark.slow

AUGMENTATIONS = ("affine", "flip", "noise", "smooth", "scale_intensity", "shift_intensity", "bias_field", "contrast")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packed")
    data = synthetic.make_isles22(tmp / "isles", n=5, shape=(24, 24, 24), seed=0, spacing=(2.0, 2.0, 2.0))
    cfg_path = tmp / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "base": str(CONFIG_DIR / "stroke-base.yaml"),
        "data": {"root": str(data), "patch_size": [16, 16, 16], "batch_size": 2, "pos_fraction": 0.5,
                 "num_workers": 0, "augmentation": {k: None for k in AUGMENTATIONS}},
        "model": {"preset": "swin-factorizer-isles",
                  "overrides": {"widths": [8, 16, 16, 16, 16], "head_dim": 4, "window": 4, "pos_embed_size": 2}},
        "optim": {"lr": 3e-3, "warmup_steps": 0},
        "trainer": {"max_steps": 6, "val_every": 3, "log_every": 1, "accelerator": "cpu", "progress_bar": False}}),
        encoding="utf-8")
    cfg = load_config(cfg_path)
    summary = pack(cfg, tmp / "pack.npz")
    return {"tmp": tmp, "cfg_path": cfg_path, "cfg": cfg, "pack": tmp / "pack.npz", "summary": summary}


def test_pack_holds_the_preprocessed_arrays_to_within_the_quantisation_step(packed):
    cfg, s = packed["cfg"], packed["summary"]
    assert (s["train"], s["val"]) == (4, 1) and s["inputs"] == ["dwi", "adc"]
    train_store, val_store = load_stores(packed["pack"], cfg, 0)
    from LesionFactorizerLib.datasets import discover
    from LesionFactorizerLib.training import folds

    train_cases, val_cases = folds.split(discover(cfg.data.format, cfg.data.root, cfg.task), 0)
    assert [c["id"] for c in train_store.cases] == [c.id for c in train_cases]
    want = load_case(train_cases[0], s["inputs"], cfg.data.spacing, task=cfg.task)
    got = train_store.get(0)
    assert got["image"].shape == want["image"].shape and got["spacing"] == tuple(want["spacing"])
    assert np.abs(got["image"] - want["image"]).max() <= 0.025 + 1e-6          # half of the 1/20 step
    assert (got["image"][want["image"] == 0] == 0).all()                       # the background stays exactly 0
    assert np.array_equal(got["label"], want["label"])


def test_crops_from_a_pack_are_placed_as_monai_places_them(packed):
    """The trainer's own sampler: uniform crop offsets (the GPU-only sampler of the earlier packed
    loop put 92 % of them at the two extremes)."""
    from LesionFactorizerLib.training.augment import train_transforms
    from LesionFactorizerLib.training.data import DrawSampler, PatchDataset

    z = np.arange(24, dtype=np.float32)[None, :, None, None] * np.ones((1, 24, 4, 4), np.float32)
    store = PackStore({"train0_image": np.zeros((1, 24, 4, 4), np.uint8), "train0_label": np.zeros((1, 24, 4, 4), np.uint8),
                       "train0_spacing": np.ones(3)}, "train", ["c"])
    store.cases[0]["image"] = z                                 # voxel value = its z index
    ds = PatchDataset(store, train_transforms([8, 4, 4], None, load_config(packed["cfg_path"]).data.augmentation), 300)
    offsets = np.array([int(ds[key]["image"][0, 0, 0, 0]) for key in DrawSampler(300, 0, 0, lambda: 0)])
    assert offsets.min() == 0 and offsets.max() == 16
    assert np.mean((offsets == 0) | (offsets == 16)) < 0.2      # 17 offsets, uniform: 2/17 ≈ 12 %


def _cli(*args, check: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    p = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", *map(str, args)], capture_output=True, text=True,
                       timeout=300, env=env, encoding="utf-8")
    if check:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


def test_train_from_a_pack_is_the_ordinary_trainer_and_init_starts_a_new_stage(packed, tmp_path):
    p = _cli("train", packed["cfg_path"], "--pack", packed["pack"], "--output-dir", tmp_path / "runs", "--no-progress")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    run_dir = Path(result["run_dir"])
    assert result["steps"] == 6
    with open(run_dir / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/dice")]
    # the trainer's validation: HD95 and the lesion F1 next to Dice, every validation case once
    assert [int(r["step"]) for r in rows] == [2, 5] and float(rows[0]["val/cases"]) == 1
    assert "val/hd95_infarct" in rows[0] and "val/lesion_f1" in rows[0]
    model_file = tmp_path / "tiny.safetensors"
    _cli("export", result["best"], "--output", model_file)
    assert load_model_file(model_file).metadata["inputs"] == ["dwi", "adc"]

    more = _cli("train", packed["cfg_path"], "--pack", packed["pack"], "--output-dir", tmp_path / "more",
                "--init", result["best"], "--no-progress", "--max-steps", "3", "--val-every", "3")
    stage = json.loads((Path(json.loads(more.stdout.strip().splitlines()[-1])["run_dir"]) / "result.json")
                       .read_text(encoding="utf-8"))
    best_step = int(load_model_file(model_file).metadata["training"]["steps"])
    assert stage["init"] == result["best"] and stage["init_step"] == best_step
    assert stage["steps"] == best_step + 3 and re.match(r"6 steps in \d+ min on CPU$", stage["history"])


def test_a_pack_made_for_other_settings_is_refused(packed, tmp_path):
    p = main_in_process("train", packed["cfg_path"], "--pack", packed["pack"], "--output-dir", tmp_path / "runs",
                        "--set", "data.spacing=[3.0,3.0,3.0]")
    assert p.returncode == 2 and "pack" in p.stderr and "spacing" in p.stderr and "pack again" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
    p = main_in_process("train", packed["cfg_path"], "--pack", packed["pack"], "--fold", "1", "--output-dir",
                        tmp_path / "runs")
    assert p.returncode == 2 and "fold=0" in p.stderr


@pytest.mark.parametrize("content, message", [("meta", "holds no training case"), ("foreign", "is not a pack")])
def test_train_refuses_empty_or_foreign_packs(packed, tmp_path, content, message):
    bad = tmp_path / "bad.npz"
    if content == "meta":
        np.savez(bad, meta=np.asarray(json.dumps({**pack_meta(packed["cfg"], 0), "ids": {"train": [], "val": []}})))
    else:
        np.savez(bad, something=np.zeros(3))
    p = main_in_process("train", packed["cfg_path"], "--pack", bad, "--output-dir", tmp_path / "r")
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
