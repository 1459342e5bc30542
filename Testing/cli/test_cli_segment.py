"""The ``segment`` command as a real subprocess: exit codes, one-line errors, no partial outputs
(acceptance 3), killing mid-inference (acceptance 4) and the JSON-lines progress contract
(acceptance 5)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO, cli, main_in_process, read_only, save_threshold_model, write_case

STAGES = {"read", "preprocess", "model", "inference", "postprocess", "components", "write"}


def snapshot(folder: Path) -> set[str]:
    """Every path under the output's parent (so stray temporary folders are caught too)."""
    return {str(p.relative_to(folder.parent)) for p in folder.parent.rglob("*")}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("case")
    paths = write_case(root / "inputs")
    model = save_threshold_model(root / "thr.safetensors")
    return root, paths, model


def assert_clean_failure(proc, out: Path, before: set[str], words: tuple[str, ...]):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert snapshot(out) == before


def run_failing(tmp_path, model, inputs: dict[str, str], words, extra=(), prepare=None):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file", encoding="utf-8")
    if prepare:
        prepare(out)
    before = snapshot(out)
    args = ["segment", "--task", "stroke", "--model", model, "-o", out, "--progress", "jsonl", *extra]
    for name, path in inputs.items():
        args += ["-i", f"{name}={path}"]
    proc = main_in_process(*args)
    assert_clean_failure(proc, out, before, words)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events and events[-1]["event"] == "error" and events[-1]["message"] in proc.stderr
    return proc


def _write(tmp_path, name, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[: image.GetDimension()])
    image.SetOrigin(origin[: image.GetDimension()])
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return str(path)


def test_missing_input(tmp_path, case):
    _, paths, model = case
    run_failing(tmp_path, model, {"dwi": paths["dwi"]}, ("missing input adc", "dwi, adc, flair"))


def test_unknown_input_name(tmp_path, case):
    _, paths, model = case
    run_failing(tmp_path, model, {**paths, "t1": paths["dwi"]}, ("unknown input name", "t1", "dwi, adc, flair"))


def test_two_dimensional_image(tmp_path, case):
    _, paths, model = case
    flat = _write(tmp_path, "flat.nii.gz", np.random.default_rng(0).random((30, 30)).astype(np.float32))
    run_failing(tmp_path, model, {"dwi": flat, "adc": paths["adc"]}, ("input dwi", "2-D", "3-D volume"))


def test_nan_filled_image(tmp_path, case):
    _, paths, model = case
    nan = _write(tmp_path, "nan.nrrd", np.full((12, 14, 16), np.nan, np.float32))
    run_failing(tmp_path, model, {"dwi": paths["dwi"], "adc": nan}, ("input adc", "NaN"))


def test_constant_image(tmp_path, case):
    _, paths, model = case
    const = _write(tmp_path, "const.mha", np.full((12, 14, 16), 7.0, np.float32))
    run_failing(tmp_path, model, {"dwi": const, "adc": paths["adc"]}, ("input dwi", "constant"))


def test_non_overlapping_volumes(tmp_path, case):
    _, paths, model = case
    far = sitk.ReadImage(paths["adc"])
    far.SetOrigin([o + 500.0 for o in far.GetOrigin()])
    far_path = tmp_path / "far_adc.nii.gz"
    sitk.WriteImage(far, str(far_path))
    run_failing(tmp_path, model, {"dwi": paths["dwi"], "adc": far_path}, ("do not overlap", "co-registered"))


def test_model_for_another_task(tmp_path, case):
    _, paths, _ = case
    tumor = save_threshold_model(tmp_path / "tumor.safetensors", task="tumor", in_channels=4, out_channels=3)
    run_failing(tmp_path, tumor, paths, ("is for task 'tumor'", "not 'stroke'"))


def test_corrupt_model_file(tmp_path, case):
    _, paths, model = case
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(Path(model).read_bytes()[:-20])
    run_failing(tmp_path, bad, paths, ("damaged", "truncated"))


def test_output_folder_not_writable(tmp_path, case):
    _, paths, model = case
    out = tmp_path / "out"
    out.mkdir()
    with read_only(out):
        before = snapshot(out)
        proc = main_in_process("segment", "--task", "stroke", "--model", model, "-o", out, "-i", f"dwi={paths['dwi']}",
                   "-i", f"adc={paths['adc']}")
        assert_clean_failure(proc, out, before, ("not writable",))


def test_existing_outputs_without_overwrite(tmp_path, case):
    _, paths, model = case
    proc = run_failing(tmp_path, model, paths, ("already holds results", "--overwrite"),
                       prepare=lambda out: (out / "report.json").write_text("{}", encoding="utf-8"))
    assert proc.returncode == 2


@pytest.mark.slow
def test_jsonl_progress_is_monotone_and_ends_with_done(tmp_path, case):
    _, paths, model = case
    out = tmp_path / "out"
    proc = cli("segment", "--task", "stroke", "--model", model, "-o", out, "-i", f"dwi={paths['dwi']}",
               "-i", f"adc={paths['adc']}", "--progress", "jsonl", "--probabilities")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]   # every line is JSON
    progress = [e for e in events if e["event"] == "progress"]
    fractions = [e["fraction"] for e in progress]
    assert len(progress) >= 5 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert {e["stage"] for e in progress} <= STAGES and {"read", "inference", "write"} <= {e["stage"] for e in progress}
    assert all(e["eta_s"] is None or e["eta_s"] >= 0 for e in progress)
    assert events[-1]["event"] == "done" and all(e["event"] != "error" for e in events)
    outputs = events[-1]["outputs"]
    for key in ("segmentation", "report", "lesions", "overview", "probabilities"):
        assert Path(outputs[key]).is_file(), key
    assert Path(outputs["dir"]) == out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.slow
def test_killing_mid_inference_leaves_no_partial_outputs(tmp_path, case, sig):
    _, paths, _ = case
    slow = save_threshold_model(tmp_path / "slow.safetensors", patch=(16, 16, 16), delay_s=0.25)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "LesionFactorizerLib", "segment", "--task", "stroke", "--model",
                             slow, "-o", str(out), "-i", f"dwi={paths['dwi']}", "-i", f"adc={paths['adc']}",
                             "--progress", "jsonl"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8")
    try:
        seen = []
        for line in proc.stdout:
            event = json.loads(line)
            seen.append(event)
            if event.get("stage") == "inference" and event["fraction"] > 0.15:
                break
        assert any(e.get("stage") == "inference" for e in seen), seen
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode != 0
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_unavailable_gpu_is_a_usage_error(tmp_path, case):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here")
    _, paths, model = case
    run_failing(tmp_path, model, paths, ("--device cuda", "no CUDA GPU"), extra=("--device", "cuda"))


def test_inputs_given_without_names_are_assigned_by_file_name(tmp_path):
    from LesionFactorizerLib.cli.segment import parse_inputs
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.core.tasks import get_task

    got = parse_inputs(["/d/sub-01_dwi.nii.gz", "adc=/d/x.nrrd"], get_task("stroke"))
    assert got == {"dwi": "/d/sub-01_dwi.nii.gz", "adc": "/d/x.nrrd"}
    with pytest.raises(UserError, match="cannot tell which input /d/scan.nii.gz is"):
        parse_inputs(["/d/scan.nii.gz"], get_task("stroke"))
    with pytest.raises(UserError, match="given twice"):
        parse_inputs(["dwi=/a.nii", "dwi=/b.nii"], get_task("stroke"))


@pytest.mark.parametrize("args, words", [
    (["segment", "--task", "stroke", "--no-such-option"], ("--output", "lesion-factorizer segment --help")),
    (["segment", "-o", "x", "--task", "stroke", "--overlap", "lots"], ("--overlap", "segment --help")),
    (["frobnicate"], ("frobnicate", "lesion-factorizer --help")),
])
def test_usage_mistakes_get_one_error_line_too(tmp_path, args, words):
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out)
    assert_clean_failure(main_in_process(*args), out, before, words)
