"""Outputs are verified, then committed as one folder (issue 13 items 3, 4, 17): a short write
fails the run, a SIGTERM during the commit leaves the old or the new complete result, and a
read-only parent is refused before any work."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO, main_in_process, read_only, save_threshold_model, write_case

import LesionFactorizerLib.pipeline.io as io
from LesionFactorizerLib.pipeline.progress import terminate_cleanly
from LesionFactorizerLib.pipeline.segment import segment_case
from LesionFactorizerLib.core.settings import SegmentSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("commit")
    return write_case(root / "in", size=(72, 80, 48)), save_threshold_model(root / "thr.safetensors")


def consistent(out: Path) -> dict:
    """The folder is one complete result: every listed output exists, nothing unlisted is there,
    and the segmentation file holds the volume the report states."""
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    listed = {Path(v).parts[0] for v in report["outputs"].values()}
    results = {p.name for p in out.iterdir() if p.name != "notes.txt"}
    assert results == listed, (results, listed)
    seg = sitk.ReadImage(str(out / report["outputs"]["segmentation"]))
    voxel_ml = np.prod(seg.GetSpacing()) / 1000.0
    assert np.count_nonzero(sitk.GetArrayViewFromImage(seg)) * voxel_ml == pytest.approx(
        sum(report["volumes_ml"].values()), rel=1e-6, abs=1e-9)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "the user's own file"
    return report


@pytest.mark.parametrize("fmt", ["nii.gz", "nii"])
def test_a_short_write_fails_the_run_and_leaves_nothing(tmp_path, case, fmt):
    paths, model = case

    def limit():   # the kernel truncates every file at 20 kB (as a quota or a full disk would)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "segment", "--task", "stroke", "--model",
                           model, "-o", str(out), "-i", f"dwi={paths['dwi']}", "-i", f"adc={paths['adc']}",
                           "--no-overview", "--probabilities", "--format", fmt, "--progress", "jsonl"],
                          cwd=REPO, preexec_fn=limit, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "failed" in lines[0], proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["event"] == "error"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def _options(paths, model, out, **kw) -> tuple:
    """``segment_case``'s inputs, output and settings."""
    return paths, out, SegmentSettings(task="stroke", models=[model], overview=False, **kw)


def test_sigterm_during_the_commit_leaves_one_complete_result(tmp_path, case, monkeypatch):
    paths, model = case
    out = tmp_path / "out"
    old = segment_case(*_options(paths, model, out, probabilities=True, threshold=0.5)).outputs
    (out / "notes.txt").write_text("the user's own file", encoding="utf-8")
    old_report = consistent(out)

    # SIGTERM arrives the moment the commit starts changing the output folder (whichever call it
    # makes first: an exchange of folders, or renames/replacements of entries).
    sent = []

    def signalling(real):
        def call(*args, **kw):
            if not sent:
                sent.append(real.__name__)
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kw)
        return call

    previous = signal.getsignal(signal.SIGTERM)
    terminate_cleanly()
    try:
        for name in ("rename", "replace"):
            monkeypatch.setattr(io.os, name, signalling(getattr(os, name)))
        if hasattr(io, "_exchange"):
            monkeypatch.setattr(io, "_exchange", signalling(io._exchange))
        with pytest.raises(SystemExit):
            segment_case(*_options(paths, model, out, overwrite=True, threshold=0.9))
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGTERM, previous)
    assert sent, "the injected signal was never sent"
    new_report = consistent(out)
    assert new_report["settings"]["threshold"] == 0.9 and "probabilities" not in new_report["outputs"]
    assert new_report["created"] >= old_report["created"] and old["dir"] == str(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]     # no temporary folder left behind


def test_sigterm_before_the_commit_keeps_the_previous_result(tmp_path, case, monkeypatch):
    paths, model = case
    out = tmp_path / "out"
    segment_case(*_options(paths, model, out, probabilities=True, threshold=0.5))
    (out / "notes.txt").write_text("the user's own file", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = io.write_image
    calls = []

    def write_then_signal(*args, **kw):
        real(*args, **kw)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    terminate_cleanly()
    monkeypatch.setattr(io, "write_image", write_then_signal)
    try:
        with pytest.raises(SystemExit):
            segment_case(*_options(paths, model, out, overwrite=True, threshold=0.9))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


KILLED_MID_SWAP = """
import os, sys
import LesionFactorizerLib.pipeline.io as io
io._exchange = lambda a, b: False          # a platform without an atomic exchange of folders
real = os.rename
def rename(a, b):
    real(a, b)
    if ".partial-" in os.fspath(b):        # the old results were just moved aside: die here
        os._exit(9)
os.rename = rename
out = io.AtomicOutput(sys.argv[1], ["report.json"], overwrite=True)
with out as tmp:
    (tmp / "report.json").write_text("new", encoding="utf-8")
    out.commit()
"""


def test_a_kill_between_the_two_renames_is_undone_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_SWAP, str(out)], cwd=REPO, timeout=60)
    assert proc.returncode == 9 and not out.exists()
    with io.AtomicOutput(out, ["report.json"], overwrite=True):
        assert (out / "report.json").read_text(encoding="utf-8") == "old"   # put back before any work


def test_read_only_parent_is_refused_before_any_work(tmp_path, case):
    paths, model = case
    parent = tmp_path / "results"
    out = parent / "case1"
    out.mkdir(parents=True)
    with read_only(parent):
        proc = main_in_process("segment", "--task", "stroke", "--model", model, "-o", out, "-i",
                               f"dwi={paths['dwi']}", "-i", f"adc={paths['adc']}", "--progress", "jsonl")
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 2 and "not writable" in proc.stderr and str(parent) in proc.stderr, proc.stderr
    assert not any(e.get("stage") == "inference" for e in events), "failed only after the work was done"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("extra", [["--probabilities"], []])
def test_full_disk_is_one_error_line_and_leaves_nothing(tmp_path, case, extra):
    """A real full file system (a 24 kB tmpfs): an image write, or a plain-file write (lesions.csv,
    report.json) when the images still fit, fails with ENOSPC."""
    paths, model = case
    disk = tmp_path / "disk"
    disk.mkdir()
    size = "24k" if extra else "8k"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        proc = main_in_process("segment", "--task", "stroke", "--model", model, "-o", disk / "out", "-i",
                               f"dwi={paths['dwi']}", "-i", f"adc={paths['adc']}", "--no-overview", *extra)
        assert sorted(p.name for p in disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "disk" in lines[0] and "Traceback" not in proc.stderr
