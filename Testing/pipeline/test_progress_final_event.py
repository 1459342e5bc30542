"""``--progress jsonl`` always ends with exactly one ``done`` or ``error`` event — when the run is
stopped by SIGTERM or SIGINT, and when the command line is wrong (issue 13 item 15). Real
subprocesses, real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from helpers import REPO, save_threshold_model, write_case

pytestmark = pytest.mark.slow

FINAL = ("done", "error")


def ends_with_one_final_event(stdout: str) -> dict:
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    finals = [e for e in events if e["event"] in FINAL]
    assert len(finals) == 1 and events[-1] is finals[0], events[-3:]
    return finals[0]


@pytest.fixture(scope="module")
def slow_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("final")
    paths = write_case(root / "in")
    # 2 s a window: the signal must land while inference still runs even when the test process is
    # descheduled for seconds between reading the event and sending it (a busy CI machine)
    slow = save_threshold_model(root / "slow.safetensors", patch=(32, 32, 32), delay_s=2.0)
    return root, paths, slow


def interrupt(args, sig, until) -> subprocess.CompletedProcess:
    # the run gets the default SIGINT action even when this test runs in a background job (whose
    # shell ignores SIGINT for its children, and Python then installs no KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-m", "LesionFactorizerLib", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if until(json.loads(line)):
                break
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(args, proc.returncode, "".join(lines) + rest, err)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_segment_stopped_by_a_signal_ends_with_one_error_event(tmp_path, slow_case, sig):
    _, paths, slow = slow_case
    out = tmp_path / "out"
    proc = interrupt(["segment", "--task", "stroke", "--model", slow, "-o", out, "-i", f"dwi={paths['dwi']}",
                      "-i", f"adc={paths['adc']}", "--progress", "jsonl"], sig,
                     lambda e: e.get("stage") == "inference" and e["fraction"] > 0.15)
    final = ends_with_one_final_event(proc.stdout)
    assert final["event"] == "error" and signal.Signals(sig).name in final["message"]
    assert proc.returncode == 128 + sig
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr     # not silent, no traceback
    assert not out.exists()


def test_batch_stopped_by_sigterm_ends_with_one_error_event(tmp_path, slow_case):
    sig = signal.SIGTERM
    root, paths, slow = slow_case
    datalist = tmp_path / "list.csv"
    datalist.write_text("case_id,dwi,adc\n" + "".join(f"c{n},{paths['dwi']},{paths['adc']}\n" for n in range(3)),
                        encoding="utf-8")
    proc = interrupt(["batch", datalist, "--model", slow, "-o", tmp_path / "out", "--progress", "jsonl",
                      "--no-overview"], sig, lambda e: e["event"] == "case")
    final = ends_with_one_final_event(proc.stdout)
    assert final["event"] == "error" and proc.returncode == 128 + sig
    assert not [p for p in (tmp_path / "out").iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("args", [
    ["segment", "--progress", "jsonl", "-i", "dwi=x.nii.gz"],                     # -o missing
    ["segment", "-o", "x", "--progress=jsonl", "--no-such-option"],
    ["batch", "list.csv", "-o", "x", "--progress", "jsonl", "--shard", "3/2"],
])
def test_usage_errors_end_with_one_error_event(args):
    proc = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", *args], cwd=REPO, capture_output=True,
                          text=True, encoding="utf-8", timeout=60)
    assert proc.returncode == 2
    final = ends_with_one_final_event(proc.stdout)
    assert final["event"] == "error" and final["message"] in proc.stderr
