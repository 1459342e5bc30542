"""`lesion-factorizer demo` on the fastest task (stroke), through a real subprocess, with the
bundled sample case and the bundled demo model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO as ROOT, main_in_process

from LesionFactorizerLib.demo import SUMMARY_NAME, bundled_demo_model, parse_tasks
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.modelfile import read_metadata
from LesionFactorizerLib.phantoms.samples import sample_case

pytestmark = pytest.mark.slow


def lf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # one torch thread: on shared CI cores, OpenMP threads competing with other jobs made
    # inference several times slower than a single thread
    env = dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "LesionFactorizerLib", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def stroke_demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    proc = lf("demo", "--tasks", "stroke", "--device", "cpu", cwd=work)   # default --out, relative to cwd
    return work, proc


def test_demo_stroke_writes_results_and_summary(stroke_demo):
    work, proc = stroke_demo
    assert proc.returncode == 0, proc.stderr
    out = work / "lesionfactorizer-demo"
    task_dir = out / "stroke"
    sample = sample_case("stroke")

    # segmentation on the sample's own grid, with the infarct roughly where the ground truth is
    seg = sitk.ReadImage(str(task_dir / "segmentation.nii.gz"))
    ref = sitk.ReadImage(sample["label"])
    assert seg.GetSize() == ref.GetSize()
    assert np.allclose(seg.GetOrigin(), ref.GetOrigin()) and np.allclose(seg.GetSpacing(), ref.GetSpacing())
    s, r = sitk.GetArrayFromImage(seg) > 0, sitk.GetArrayFromImage(ref) > 0
    own_dice = 2 * (s & r).sum() / (s.sum() + r.sum())
    assert own_dice > 0.5, "the bundled stroke demo model should find the sample's infarct"

    report = json.loads((task_dir / "report.json").read_text())
    assert report["task"] == "stroke" and report["model"]["name"] == "demo-stroke"
    assert report["lesion_count"] >= 1
    assert (task_dir / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = json.loads((task_dir / "components" / "components.json").read_text())
    assert index, "a Factorizer demo model writes NMF components"

    summary = json.loads((out / SUMMARY_NAME).read_text())
    entry = summary["tasks"]["stroke"]
    assert list(summary["tasks"]) == ["stroke"]
    assert entry["scores"]["dice_infarct"] == pytest.approx(own_dice, abs=1e-6)
    assert entry["volumes_ml"]["infarct"] == pytest.approx(s.sum() * np.prod(seg.GetSpacing()) / 1000, rel=1e-6)
    assert entry["lesion_count"] == report["lesion_count"]

    # the printed summary: time, volume, lesions and Dice, as stored
    text = proc.stdout
    assert "stroke" in text and "not for clinical use" in text
    assert f"infarct {entry['scores']['dice_infarct']:.3f}" in text
    assert f"lesions: {entry['lesion_count']}" in text
    assert f"{entry['seconds']:.1f} s" in text


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "stroke").mkdir(parents=True)
    keep = tmp_path / "mine" / "stroke" / "notes.txt"
    keep.write_text("user data")
    proc = main_in_process("demo", "--tasks", "stroke", "--out", "mine")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "--overwrite" in proc.stderr
    assert keep.read_text() == "user data" and sorted(p.name for p in (tmp_path / "mine").rglob("*")) == [
        "notes.txt", "stroke"]


def test_unknown_task_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proc = main_in_process("demo", "--tasks", "stroke,brain")
    assert proc.returncode == 2 and "stroke" in proc.stderr and "ms-new" in proc.stderr
    assert not (tmp_path / "lesionfactorizer-demo").exists()
    with pytest.raises(UserError):
        parse_tasks(",")
    assert parse_tasks("stroke,tumor,stroke") == ["stroke", "tumor"]


def test_missing_bundled_model_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(UserError) as err:
        bundled_demo_model("ms-new", dirs=[tmp_path])
    msg = str(err.value)
    assert "demo-ms-new.safetensors" in msg and "training/demo_models.py" in msg


@pytest.mark.parametrize("task", ["tumor", "stroke", "ms-new"])
def test_bundled_demo_models_are_small_fp16_and_carry_a_model_card(task):
    path = bundled_demo_model(task)
    meta = read_metadata(path)
    assert meta["task"] == task
    assert path.stat().st_size < 8 * 2**20
    assert meta["weights"]["dtype"] == "float16"
    assert meta["inputs"] and meta["preprocessing"]["spacing"] and meta["preprocessing"]["patch_size"]
    card = meta["description"]
    for phrase in ("synthetic phantoms", "not for clinical use", "lesion-factorizer train", "--data-root"):
        assert phrase in card
    assert meta["training"]["held_out"]["mean"]
