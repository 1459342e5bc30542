"""Cancel must not block Slicer's GUI thread, and must still take the whole process tree down.

Real processes: a "launcher" child that starts a grandchild, both ignoring SIGTERM, so only the
SIGKILL that ``poll()`` sends after the grace period can end them.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import REPO


pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups"), pytest.mark.slow]


@pytest.fixture
def worker(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "LesionFactorizer"))
    from LesionFactorizerModuleLib import worker

    return worker


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a killed grandchild may stay a zombie until init reaps it: that counts as dead
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").split()[2] != "Z"
    except FileNotFoundError:
        return False


STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(60)"])
    open(sys.argv[1], "w").write(str(child.pid))
    time.sleep(0.5)
    print('{"event":"progress","stage":"inference","fraction":0.1}', flush=True)
    time.sleep(60)
""")


def _start_stubborn(worker, tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN, encoding="utf-8")
    pid_file = tmp_path / "grandchild.pid"
    proc = worker.WorkerProcess([sys.executable, str(script), str(pid_file)])
    deadline = time.monotonic() + 20
    while not any(e.kind == "progress" for e in proc.poll(timeout=0.1)):
        assert time.monotonic() < deadline, "the fake worker never started"
    return proc, int(pid_file.read_text(encoding="utf-8"))


def test_cancel_returns_at_once_and_poll_kills_a_tree_that_ignores_sigterm(worker, tmp_path):
    proc, grandchild = _start_stubborn(worker, tmp_path)
    proc.kill_grace_s = 0.5
    proc.cancel()
    # cancel() did not wait: both processes ignore SIGTERM, so they are still there right after it
    assert proc.running and _alive(proc.pid) and _alive(grandchild)
    result = proc.wait(poll_interval=0.05)  # the polls escalate to SIGKILL once the grace period is over
    assert result.cancelled and not result.succeeded
    assert worker.failure_message(result) == "Segmentation cancelled."
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild survived cancel"
    assert not _alive(proc.pid)


def test_cancel_twice_and_after_the_end_is_harmless(worker, tmp_path):
    script = tmp_path / "quick.py"
    script.write_text("print('{\"event\":\"done\",\"outputs\":{}}', flush=True)\n", encoding="utf-8")
    proc = worker.WorkerProcess([sys.executable, str(script)])
    result = proc.wait(poll_interval=0.02)
    proc.cancel()
    assert result.succeeded and not proc.result().cancelled  # a finished run is not "cancelled" afterwards
    proc2, grandchild = _start_stubborn(worker, tmp_path)
    proc2.kill_grace_s = 0.2
    proc2.cancel()
    proc2.cancel()
    assert proc2.wait(poll_interval=0.05).cancelled
