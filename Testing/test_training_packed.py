"""training/packed.py: pack → train from the pack (CPU here; the code path is the GPU one) → export.

Real files: synthetic ISLES'22 cases written by the training package, packed through the training
preprocessing, trained in a real subprocess, exported and loaded by the inference pipeline.
"""

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from LesionFactorizerLib.modelfile import load_model_file
from LesionFactorizerLib.training import synthetic
from LesionFactorizerLib.training.config import CONFIG_DIR, load_config
from LesionFactorizerLib.training.packed import GpuPatches, load_pack, pack
from LesionFactorizerLib.training.preprocess import load_case

ROOT = Path(__file__).resolve().parent.parent
AUGMENTATIONS = ("affine", "flip", "noise", "smooth", "scale_intensity", "shift_intensity", "bias_field", "contrast")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packed")
    data = synthetic.make_isles22(tmp / "isles", n=5, shape=(24, 24, 24), seed=0, spacing=(2.0, 2.0, 2.0))
    cfg_path = tmp / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "base": str(CONFIG_DIR / "stroke-base.yaml"),
        "data": {"root": str(data), "patch_size": [16, 16, 16], "batch_size": 2, "pos_fraction": 0.5,
                 "augmentation": {k: None for k in AUGMENTATIONS}},
        "model": {"preset": "swin-factorizer-isles",
                  "overrides": {"widths": [8, 16, 16, 16, 16], "head_dim": 4, "window": 4, "pos_embed_size": 2}},
        "optim": {"lr": 3e-3, "warmup_steps": 0},
        "trainer": {"max_steps": 12, "val_every": 6}}), encoding="utf-8")
    cfg = load_config(cfg_path)
    summary = pack(cfg, tmp / "pack.npz")
    return {"tmp": tmp, "cfg_path": cfg_path, "cfg": cfg, "pack": tmp / "pack.npz", "summary": summary}


def test_pack_holds_the_preprocessed_arrays_to_within_the_quantisation_step(packed):
    cfg, s = packed["cfg"], packed["summary"]
    assert (s["train"], s["val"]) == (4, 1) and s["inputs"] == ["dwi", "adc"]
    arrays = load_pack(packed["pack"], "cpu")
    from LesionFactorizerLib.datasets import discover
    from LesionFactorizerLib.training import folds

    train_cases, _ = folds.split(discover(cfg.data.format, cfg.data.root, cfg.task), 0)
    want = load_case(train_cases[0], s["inputs"], cfg.data.spacing, task=cfg.task)
    got = arrays["train"][0]
    image = got["image"].numpy()
    assert image.shape == want["image"].shape
    assert np.abs(image - want["image"]).max() <= 0.025 + 1e-6          # half of the 1/20 step
    assert (image[want["image"] == 0] == 0).all()                         # the background stays exactly 0
    assert np.array_equal(got["label"].numpy(), want["label"])


def test_spatial_augmentation_moves_image_and_label_together():
    """Channel 0 *is* the label, so after rotation, scaling and flips thresholding it must give the
    label back (up to interpolation at the borders); a label left untransformed would not match."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in (20, 24, 28)], indexing="ij")
    label = ((z < 9) & (y < 10) | (x > 20)).astype(np.uint8)[None]          # asymmetric, off-centre
    image = np.concatenate([label, np.random.default_rng(0).normal(size=label.shape)]).astype(np.float32)
    case = {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}
    aug = copy.deepcopy(load_config("demo-ms-new-gpu").data.augmentation)
    for name in AUGMENTATIONS:
        if name not in ("affine", "flip"):
            setattr(aug, name, None)
    aug.affine.prob = aug.flip.prob = 1.0
    patch = [12, 16, 20]                                                      # not cubic on purpose
    x_aug, y_aug = GpuPatches([case], patch, None, aug, seed=1).batch(16)
    plain = copy.deepcopy(aug)
    plain.affine = plain.flip = None
    _, y_plain = GpuPatches([case], patch, None, plain, seed=1).batch(16)     # same crops, no transform

    def dice(a, b):
        return float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))

    moved = x_aug[:, :1] > 0.5
    assert not torch.equal(y_aug, y_plain)                                    # the transform did something
    assert dice(moved, y_aug.bool()) > 0.9
    assert dice(moved, y_plain.bool()) < dice(moved, y_aug.bool()) - 0.1


def test_patches_with_every_augmentation_are_finite_and_lesion_centred(packed):
    cases = load_pack(packed["pack"], "cpu")["train"]
    aug = copy.deepcopy(load_config("demo-ms-new-gpu").data.augmentation)
    from LesionFactorizerLib.training.config import BiasFieldAug

    aug.bias_field = BiasFieldAug()
    for name in AUGMENTATIONS:
        getattr(aug, name).prob = 1.0
    x, y = GpuPatches(cases, [16, 16, 16], 1.0, aug, seed=0).batch(8)
    assert x.shape == (8, 2, 16, 16, 16) and y.shape == (8, 1, 16, 16, 16) and y.dtype == torch.uint8
    assert set(torch.unique(y).tolist()) <= {0, 1} and torch.isfinite(x).all()
    plain = copy.deepcopy(aug)
    for name in AUGMENTATIONS:
        setattr(plain, name, None)
    x0, y0 = GpuPatches(cases, [16, 16, 16], 1.0, plain, seed=0).batch(8)
    # lesion-centred crops hold lesion; the phantoms' lesions are bright on DWI (channel 0)
    assert (y0.flatten(1).amax(1) == 1).all()
    assert x0[:, 0][y0[:, 0] == 1].mean() > x0[:, 0][y0[:, 0] == 0].mean() + 1
    assert not torch.equal(x, x0)


def _train(packed, out: Path, *extra: str, check: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    p = subprocess.run([sys.executable, str(ROOT / "training" / "packed.py"), "train", str(packed["cfg_path"]),
                        "--pack", str(packed["pack"]), "--output-dir", str(out), "--device", "cpu", *extra],
                       capture_output=True, text=True, timeout=300, env=env, encoding="utf-8")
    if not check:
        return p
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_train_from_pack_writes_the_train_run_layout_that_export_reads(packed, tmp_path):
    result = _train(packed, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "tiny" / "fold0"
    assert result["steps"] == 12 and result["device"] == "CPU"
    with open(run_dir / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [6, 12]
    assert all(0 <= float(r["val/dice"]) <= 1 for r in rows) and "val/lesion_f1" in rows[0]
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])
    best = run_dir / "checkpoints" / "best.ckpt.safetensors"
    assert best.is_file() and (run_dir / "checkpoints" / "last.ckpt.safetensors").is_file()

    model_file = tmp_path / "tiny.safetensors"
    p = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "export", str(best), "--output", str(model_file)],
                       capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert p.returncode == 0, p.stderr
    loaded = load_model_file(model_file)
    assert loaded.metadata["inputs"] == ["dwi", "adc"]
    assert loaded.metadata["training"]["steps"] == result["best_step"]

    # the same run folder again is refused, not overwritten
    again = _train(packed, tmp_path / "runs", check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr

    # --init continues from those weights with a new schedule; steps keep counting, the starting
    # weights are validated first (the score to beat) and the history names the earlier run
    more = _train(packed, tmp_path / "more", "--init", str(best), "--set", "trainer.max_steps=6",
                  "--set", "trainer.val_every=3")
    assert more["init_step"] == result["best_step"] and more["steps"] == result["best_step"] + 6
    assert more["history"].startswith("12 steps in 0 min on CPU")
    with open(tmp_path / "more" / "tiny" / "fold0" / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [result["best_step"], result["best_step"] + 3, result["best_step"] + 6]
    assert more["best_val_dice"] >= result["best_val_dice"] - 1e-9


def test_time_budget_sets_the_step_count(packed, tmp_path):
    result = _train(packed, tmp_path / "runs", "--minutes", "0.4", "--set", "trainer.max_steps=100000")
    assert 40 < result["steps"] < 100000 and result["seconds"] < 0.4 * 60 + 20


def test_a_pack_made_for_other_settings_is_refused(packed, tmp_path):
    p = _train(packed, tmp_path / "runs", "--set", "data.spacing=[3.0,3.0,3.0]", check=False)
    assert p.returncode == 2 and "pack" in p.stderr and "spacing" in p.stderr and "pack again" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, message", [("meta", "holds no training case"), ("foreign", "is not a pack")])
def test_train_refuses_empty_or_foreign_packs(packed, tmp_path, content, message):
    from LesionFactorizerLib.training.packed import pack_meta

    bad = tmp_path / "bad.npz"
    if content == "meta":
        np.savez(bad, meta=np.asarray(json.dumps(pack_meta(packed["cfg"]))))
    else:
        np.savez(bad, something=np.zeros(3))
    p = subprocess.run([sys.executable, str(ROOT / "training" / "packed.py"), "train", str(packed["cfg_path"]),
                        "--pack", str(bad), "--output-dir", str(tmp_path / "r"), "--device", "cpu"],
                       capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
