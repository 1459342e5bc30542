"""Acceptance 1: tiny end-to-end training runs on synthetic volumes in the public layouts.

A Swin Factorizer (the ISLES preset with small widths) through the real ``lesion-factorizer
train`` / ``export`` / ``segment`` / ``evaluate`` commands, and a U-Net (the MSSEG-2 preset with
small widths) through the Python API including resume. The loss must go down, and the exported
model file must load in the inference pipeline and segment a case.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from LesionFactorizerLib.modelfile import load_model_file, read_metadata
from LesionFactorizerLib.training import synthetic
from LesionFactorizerLib.training.config import CONFIG_DIR, load_config
from LesionFactorizerLib.training.run import train

pytestmark = pytest.mark.slow

SHAPE = (24, 24, 24)
NO_AUG = {k: None for k in ("affine", "flip", "noise", "smooth", "scale_intensity", "shift_intensity",
                            "bias_field", "contrast")}


def _cli(*args, timeout=240):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "OMP_NUM_THREADS": "2"}
    p = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, env=env, encoding="utf-8")
    return p


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def _write_config(path: Path, base: str, data_root: Path, model: dict, steps: int, out: Path, **extra) -> Path:
    cfg = {"base": str(CONFIG_DIR / base),
           "data": {"root": str(data_root), "patch_size": [16, 16, 16], "batch_size": 2, "num_workers": 0,
                    "cache": "memory", "augmentation": NO_AUG, **extra.pop("data", {})},
           "model": model,
           "optim": {"lr": 3e-3, "warmup_steps": 0},
           "trainer": {"max_steps": steps, "val_every": steps // 2, "log_every": 1, "accelerator": "cpu",
                       "output_dir": str(out), "progress_bar": False}}
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_swin_factorizer_train_export_segment_evaluate_via_cli(tmp_path):
    data = synthetic.make_isles22(tmp_path / "isles", n=5, shape=SHAPE, seed=0, spacing=(2.0, 2.0, 2.0))
    model = {"preset": "swin-factorizer-isles",
             "overrides": {"widths": [8, 16, 16, 16, 16], "head_dim": 4, "window": 4, "pos_embed_size": 2}}
    cfg = _write_config(tmp_path / "swin.yaml", "stroke-base.yaml", data, model, 10, tmp_path / "runs",
                        data={"spacing": [2.0, 2.0, 2.0]})
    p = _cli("train", cfg, "--fold", "0", "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    run_dir = Path(res["run_dir"])
    assert res["steps"] == 10 and Path(res["best"]).is_file() and Path(res["last"]).is_file()
    losses = _losses(run_dir)
    assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3])

    out = tmp_path / "swin.safetensors"
    p = _cli("export", run_dir, "--output", out, "--description", "test model")
    assert p.returncode == 0, p.stderr[-3000:]
    meta = read_metadata(out)
    assert meta["task"] == "stroke" and meta["inputs"] == ["dwi", "adc"]
    assert meta["outputs"] == {"activation": "sigmoid", "channels": ["infarct"]}
    assert meta["preprocessing"]["spacing"] == [2.0, 2.0, 2.0] and meta["preprocessing"]["patch_size"] == [16, 16, 16]
    t = meta["training"]
    assert t["fold"] == 0 and t["config"]["model"]["preset"] == "swin-factorizer-isles"
    assert "val/dice" in t["validation"]["best"] and t["validation"]["last"]["step"] == 9
    assert t["validation"]["best"]["val/dice"] >= t["validation"]["last"]["val/dice"]
    assert "library_version" in t["code"]
    assert load_model_file(out).model.has_components

    # the exported file segments a case through the inference pipeline (real CLI)
    seg_dir = tmp_path / "pred" / "sub-strokecase0001"
    case = data / "rawdata" / "sub-strokecase0001" / "ses-0001" / "dwi"
    p = _cli("segment", "--model", out, "--input", f"dwi={case / 'sub-strokecase0001_ses-0001_dwi.nii.gz'}",
             "--input", f"adc={case / 'sub-strokecase0001_ses-0001_adc.nii.gz'}", "--output", seg_dir,
             "--progress", "none", "--no-overview", "--device", "cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    seg = sitk.ReadImage(str(seg_dir / "segmentation.nii.gz"))
    ref = sitk.ReadImage(str(case / "sub-strokecase0001_ses-0001_dwi.nii.gz"))
    assert seg.GetSize() == ref.GetSize() and seg.GetSpacing() == ref.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}

    # and its output can be scored against the data set's own labels
    p = _cli("evaluate", "--task", "stroke", "--pred", tmp_path / "pred", "--ref", data,
             "--ref-format", "isles22", "--out", tmp_path / "eval")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "eval" / "cases.csv", encoding="utf-8")))
    assert [r["case"] for r in rows] == ["sub-strokecase0001"] and 0.0 <= float(rows[0]["dice_infarct"]) <= 1.0


def test_unet_train_resume_and_export_via_api(tmp_path):
    from LesionFactorizerLib.training.export import export_checkpoint

    data = synthetic.make_msseg2(tmp_path / "msseg2", n=5, shape=SHAPE, seed=1)
    model = {"preset": "unet-msseg2", "overrides": {"widths": [8, 16, 16, 16, 16]}}
    path = _write_config(tmp_path / "unet.yaml", "ms-new-base.yaml", data, model, 6, tmp_path / "runs")
    cfg = load_config(path)
    first = train(cfg, fold=1, progress=False)
    assert first.steps == 6
    with pytest.raises(Exception, match="--resume"):
        train(cfg, fold=1, progress=False)      # never silently overwrite a run
    more = load_config(path, {"trainer": {"max_steps": 12}})
    second = train(more, fold=1, resume=True, progress=False)
    assert second.steps == 12 and second.run_dir == first.run_dir
    losses = _losses(second.run_dir)
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    res = export_checkpoint(second.last, tmp_path / "unet.safetensors")
    assert res["metadata"]["training"]["steps"] == 12
    loaded = load_model_file(tmp_path / "unet.safetensors")
    assert not getattr(loaded.model, "has_components", False)
    assert loaded.metadata["inputs"] == ["flair_baseline", "flair_followup"]
    # bad configs fail with one clear line
    bad = load_config(path, {"model": {"overrides": {"in_channels": 3}}})
    with pytest.raises(Exception, match="input channels"):
        train(bad, fold=0, progress=False)
    assert not (tmp_path / "runs" / "unet" / "fold0").exists()   # nothing half-made


def test_cross_validation_runs_each_fold_and_resume_skips_finished(tmp_path, capfd):
    from LesionFactorizerLib.training.run import cross_validate, run_dir_for

    data = synthetic.make_msseg2(tmp_path / "msseg2", n=5, shape=(20, 20, 20), seed=2)
    model = {"preset": "unet-msseg2", "overrides": {"widths": [8, 16, 16, 16, 16]}}
    cfg_path = _write_config(tmp_path / "cv.yaml", "ms-new-base.yaml", data, model, 2, tmp_path / "runs")
    cfg = load_config(cfg_path)
    results = cross_validate(cfg, folds=[0, 3])
    assert [r.run_dir.name for r in results] == ["fold0", "fold3"]
    for k in (0, 3):
        res = json.loads((run_dir_for(cfg, k) / "result.json").read_text(encoding="utf-8"))
        assert res["fold"] == k and res["steps"] == 2 and res["best_val_dice"] is not None
    # each fold validated on its own held-out cases (MONAI-compatible split of 5 cases)
    assert cross_validate(cfg, folds=[0, 3], resume=True) == []
    # the cv command: the config asks for progress bars, --no-progress must win for every fold
    import argparse

    from LesionFactorizerLib.cli import cv

    parser = argparse.ArgumentParser(prog="cv")
    cv.add_arguments(parser)
    args = parser.parse_args([str(cfg_path), "--folds", "1", "--no-progress", "--set", "trainer.progress_bar=true"])
    capfd.readouterr()
    assert cv.run(args) == 0
    out, err = capfd.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert list(summary["folds"]) == ["1"] and summary["folds"]["1"] is not None
    # every finished fold's model, and a summary beside them (per fold and mean)
    from LesionFactorizerLib.modelfile import read_metadata

    models = tmp_path / "runs" / cfg.name / "models"
    assert summary["models"] == [str(models / "fold1.safetensors")]
    assert read_metadata(models / "fold1.safetensors")["training"]["fold"] == 1
    written = json.loads((models / "cv-summary.json").read_text(encoding="utf-8"))
    assert [r["fold"] for r in written["folds"]] == [1]
    assert written["mean"]["val/dice"] == pytest.approx(summary["folds"]["1"])
    assert "mean" in (models / "cv-summary.csv").read_text(encoding="utf-8")
    assert "preprocessing" not in err and "Epoch" not in out + err and "it/s" not in out + err
