"""``lesion-factorizer phantom`` through a real subprocess: success and one-line bad-input errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO as ROOT, main_in_process

pytest.importorskip("nilearn")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "phantom", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env, encoding="utf-8")


@pytest.mark.slow
def test_cli_writes_cases_and_previews(tmp_path):
    out = tmp_path / "isles"
    res = _cli("--task", "stroke", "--n", "2", "--out", str(out), "--seed", "4", "--spacing", "4", "--preview")
    assert res.returncode == 0, res.stderr
    assert "wrote 2 stroke case(s)" in res.stdout
    for i in (1, 2):
        assert (out / f"derivatives/sub-strokecase000{i}/ses-0001/sub-strokecase000{i}_ses-0001_msk.nii.gz").is_file()
        assert (out / f"previews/sub-strokecase000{i}.png").stat().st_size > 1000
    # Same arguments again: refused, nothing changed.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    res = _cli("--task", "stroke", "--n", "1", "--out", str(out), "--seed", "4", "--spacing", "4")
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "--overwrite" in res.stderr
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--task", "tumour"], "unknown task"),
        (["--task", "tumor", "--n", "0"], "--n"),
        (["--task", "tumor", "--n", "two"], "whole number"),
        (["--task", "tumor", "--seed", "-1"], "--seed"),
        (["--task", "tumor", "--spacing", "1,2"], "three"),
        (["--task", "tumor", "--spacing", "0"], "between"),
        (["--task", "tumor", "--spacing", "a"], "numbers"),
        (["--task", "tumor", "--size", "4"], "between"),
    ],
)
def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, args, fragment):
    out = tmp_path / "out"
    res = main_in_process("phantom", *args, "--out", str(out))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]
    assert not out.exists()


def test_cli_refuses_a_file_as_output(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x", encoding="utf-8")
    res = main_in_process("phantom", "--task", "ms-new", "--out", str(target), "--spacing", "4")
    assert res.returncode == 2 and res.stderr.startswith("error:") and "is a file" in res.stderr
    assert target.read_text(encoding="utf-8") == "x"


@pytest.mark.slow
def test_generation_needs_no_network(tmp_path):
    """The template comes from files inside nilearn: generation works with sockets disabled."""
    code = (
        "import socket\n"
        "def _no(*a, **k): raise OSError('network disabled')\n"
        "socket.socket = _no; socket.create_connection = _no; socket.getaddrinfo = _no\n"
        "from LesionFactorizerLib.phantoms import generate_case\n"
        "c = generate_case('tumor', 0, 0, spacing=4)\n"
        "print(int(c.label.max()))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) == 3
