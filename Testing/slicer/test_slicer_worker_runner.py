"""The module's worker runner: command line, JSON-lines parsing, real child processes, cancel, errors.

The child processes here are real Python interpreters printing what the worker contract specifies (README, `--progress jsonl`) (the
end-to-end run of the real ``segment`` command is in test_slicer_cli_worker.py).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "LesionFactorizer"))

from LesionFactorizerModuleLib import worker  # noqa: E402
from LesionFactorizerModuleLib.progress import ProgressTracker, format_eta, parse_line  # noqa: E402


# ---- parsing ------------------------------------------------------------------------------------

def test_parse_progress_done_error_and_log_lines():
    e = parse_line('{"event":"progress","stage":"inference","fraction":0.42,"eta_s":12.5}\n')
    assert (e.kind, e.stage, e.fraction, e.eta_s) == ("progress", "inference", 0.42, 12.5)
    e = parse_line('{"event":"done","outputs":{"segmentation":"segmentation.nii.gz"}}')
    assert e.kind == "done" and e.outputs == {"segmentation": "segmentation.nii.gz"}
    e = parse_line('{"event":"error","message":"input flair is missing; pass --input flair=PATH"}')
    assert e.kind == "error" and e.message.startswith("input flair is missing")
    assert parse_line("Traceback (most recent call last):").kind == "log"
    assert parse_line('{"event":"warning","message":"resampled t2"}').message == "warning: resampled t2"


@pytest.mark.parametrize("line", ['{"event":"progress","fraction":"abc"}', '{"event": "progress", "fraction": NaN}',
                                  '{not json', '[1, 2]', '{"event":"progress","fraction":7,"eta_s":-3}', ""])
def test_malformed_lines_never_raise(line):
    event = parse_line(line)
    assert event.kind in ("progress", "log")
    if event.kind == "progress":
        assert event.fraction is None or 0.0 <= event.fraction <= 1.0
        assert event.eta_s is None


def test_tracker_never_goes_backwards_and_names_the_stage():
    tracker = ProgressTracker()
    assert tracker.update(parse_line('{"event":"progress","stage":"inference","fraction":0.5,"eta_s":65}'))
    assert tracker.percent == 50 and tracker.text == "Segmenting: 50% (about 1 min 05 s left)"
    assert tracker.bar_format == "Segmenting: %p% (about 1 min 05 s left)"  # Qt fills in %p
    tracker.update(parse_line('{"event":"progress","stage":"inference","fraction":0.3,"eta_s":80}'))
    assert tracker.percent == 50  # a restarted stage (e.g. CPU fallback) does not move the bar back
    tracker.update(parse_line('{"event":"done","outputs":{}}'))
    assert tracker.percent == 100 and tracker.text == "Done"


def test_format_eta():
    assert format_eta(None) == ""
    assert format_eta(4.4) == "4 s"
    assert format_eta(125) == "2 min 05 s"
    assert format_eta(3 * 3600 + 60) == "3 h 01 min"


# ---- command line -------------------------------------------------------------------------------

def test_build_segment_command_matches_the_contract(tmp_path):
    request = worker.SegmentRequest.of(
        task="tumor", inputs={"flair": tmp_path / "a b/flair.nrrd", "t1": "/x/t1.nrrd"}, output_dir=tmp_path / "out",
        models=["m1.safetensors", "m2"], device="cpu", preset="fast", components=True, probabilities=True,
        tta=True, nmf_iters=3, skip_nmf=["bridge", "decoder1"], overwrite=True)
    args = worker.build_segment_command("/usr/bin/PythonSlicer", request)
    assert args[:6] == ["/usr/bin/PythonSlicer", "-m", "LesionFactorizerLib", "segment", "--task", "tumor"]
    assert args[args.index("--input") + 1] == f"flair={tmp_path / 'a b/flair.nrrd'}"  # spaces kept, no shell
    assert [args[i + 1] for i, a in enumerate(args) if a == "--model"] == ["m1.safetensors", "m2"]
    assert args[args.index("--skip-nmf") + 1] == "bridge,decoder1"
    assert args[args.index("--progress") + 1] == "jsonl"
    for flag in ("--components", "--probabilities", "--tta", "--overwrite"):
        assert flag in args
    minimal = worker.build_segment_command("py", worker.SegmentRequest.of("stroke", {"dwi": "d", "adc": "a"}, "o"))
    for flag in ("--components", "--probabilities", "--tta", "--overwrite", "--nmf-iters", "--skip-nmf", "--model"):
        assert flag not in minimal


def test_command_line_is_accepted_by_the_real_cli_parser(tmp_path):
    """Our flags are exactly the CLI's: the library's own argument parser accepts the command."""
    from LesionFactorizerLib.cli import build_parser

    parser = build_parser()
    request = worker.SegmentRequest.of(task="tumor", inputs={"flair": "f.nii.gz", "t1": "t1.nii.gz"},
                                       output_dir=tmp_path, models=["m"], device="cpu", preset="best",
                                       components=True, probabilities=True, tta=True, nmf_iters=2,
                                       skip_nmf=["encoder1"], overwrite=True, overview=False)
    args = parser.parse_args(worker.build_segment_command("py", request)[3:])
    assert args.overview is False and args.progress == "jsonl" and args.nmf_iters == 2
    assert args.command == "segment"
    assert args.task == "tumor" and args.device == "cpu" and args.preset == "best"
    assert args.components and args.probabilities and args.tta and args.overwrite


@pytest.mark.parametrize("change, message", [
    ({"device": "gpu"}, "unknown device"), ({"preset": "turbo"}, "unknown preset"),
    ({"skip_nmf": ["encoder9"]}, "unknown NMF layer"), ({"nmf_iters": 0}, "at least 1"),
    ({"inputs": {}}, "No input"), ({"inputs": {"fl air": "x"}}, "not valid"),
    ({"nmfIterations": 3}, "Unknown segment setting")])
def test_impossible_requests_are_refused_with_a_message(change, message):
    fields = dict(task="tumor", inputs={"flair": "f"}, output_dir="o")
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        worker.build_segment_command("py", worker.SegmentRequest.of(**fields))


def test_worker_environment_puts_the_library_first_without_touching_os_environ():
    before = dict(os.environ)
    env = worker.worker_environment({"PYTHONPATH": "/other", "HOME": "/h"}, "/lib")
    assert env["PYTHONPATH"].split(os.pathsep) == ["/lib", "/other"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/h"
    assert dict(os.environ) == before


# ---- real child processes -----------------------------------------------------------------------

FAKE_WORKER = textwrap.dedent("""
    import json, sys, time
    mode = sys.argv[1]
    def emit(obj):
        print(json.dumps(obj), flush=True)
    print("loading model", flush=True)
    for i, stage in enumerate(["read", "inference", "write"]):
        emit({"event": "progress", "stage": stage, "fraction": (i + 1) / 4, "eta_s": 3 - i})
        time.sleep(0.05)
    if mode == "ok":
        emit({"event": "progress", "stage": "write", "fraction": 1.0, "eta_s": 0.0})
        emit({"event": "done", "outputs": {"segmentation": "segmentation.nii.gz", "report": "report.json"}})
        sys.exit(0)
    if mode == "usage":
        emit({"event": "error", "message": "input adc is missing; pass --input adc=PATH"})
        print("error: input adc is missing; pass --input adc=PATH", file=sys.stderr, flush=True)
        sys.exit(2)
    if mode == "oom":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr, flush=True)
        sys.exit(1)
""")


def _start(tmp_path, mode):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER, encoding="utf-8")
    return worker.WorkerProcess([sys.executable, str(script), mode], env=worker.worker_environment(os.environ, None))


@pytest.mark.slow
def test_successful_run_streams_progress_and_outputs(tmp_path):
    proc = _start(tmp_path, "ok")
    events = []
    result = proc.wait(callback=events.append, poll_interval=0.02)
    assert result.succeeded and result.returncode == 0
    fractions = [e.fraction for e in events if e.kind == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == 4
    assert events[-1].kind == "done"
    assert result.outputs["segmentation"] == "segmentation.nii.gz"
    assert "loading model" in result.log


@pytest.mark.slow
def test_poll_never_blocks_while_the_worker_is_busy(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(2)\nprint('late', flush=True)\n", encoding="utf-8")
    proc = worker.WorkerProcess([sys.executable, str(script)])
    start = time.monotonic()
    assert proc.poll() == []
    assert time.monotonic() - start < 0.2
    assert proc.running
    proc.cancel()
    proc.wait(poll_interval=0.02)


@pytest.mark.slow
def test_usage_error_becomes_the_workers_one_line_message(tmp_path):
    result = _start(tmp_path, "usage").wait(poll_interval=0.02)
    assert result.returncode == 2 and not result.succeeded
    message = worker.failure_message(result)
    assert message == "input adc is missing; pass --input adc=PATH."
    assert "check the log" not in message.lower()


@pytest.mark.slow
def test_unexpected_failure_gives_the_exception_and_a_hint(tmp_path):
    result = _start(tmp_path, "oom").wait(poll_interval=0.02)
    assert result.returncode == 1
    message = worker.failure_message(result)
    assert message.startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert "choose device CPU" in message


@pytest.mark.slow
def test_cancel_kills_the_whole_process_tree(tmp_path):
    """PythonSlicer is a launcher whose child runs the real work: both must die."""
    grandchild_pid_file = tmp_path / "grandchild.pid"
    script = tmp_path / "launcher.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(grandchild_pid_file)!r}, "w").write(str(child.pid))
        print('{{"event":"progress","stage":"inference","fraction":0.1,"eta_s":50}}', flush=True)
        time.sleep(60)
    """), encoding="utf-8")
    proc = worker.WorkerProcess([sys.executable, str(script)])
    deadline = time.monotonic() + 20
    events = []
    while not events and time.monotonic() < deadline:
        events = proc.poll(timeout=0.1)
    assert events and events[0].kind == "progress"
    grandchild = int(grandchild_pid_file.read_text(encoding="utf-8"))
    proc.cancel()
    result = proc.wait(poll_interval=0.02)
    assert result.cancelled and not result.succeeded
    assert worker.failure_message(result) == "Segmentation cancelled."
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        # a killed child of a dead parent may linger as a zombie until reaped by init
        try:
            state = Path(f"/proc/{grandchild}/stat").read_text(encoding="utf-8").split()[2]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the worker's child process survived cancel")


@pytest.mark.slow
def test_killed_worker_without_message_is_explained(tmp_path):
    script = tmp_path / "suicide.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", encoding="utf-8")
    if sys.platform == "win32":
        pytest.skip("POSIX signals")
    result = worker.WorkerProcess([sys.executable, str(script)]).wait(poll_interval=0.02)
    message = worker.failure_message(result)
    assert "signal 9" in message and "memory" in message


@pytest.mark.slow
def test_a_grandchild_holding_the_pipe_does_not_keep_the_run_alive(tmp_path):
    if sys.platform == "win32":
        pytest.skip("POSIX process model")
    script = tmp_path / "leaky.py"
    pid_file = tmp_path / "helper.pid"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys
        # a detached helper that inherits stdout and outlives the worker
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
        open({str(pid_file)!r}, "w").write(str(helper.pid))
        print('{{"event":"done","outputs":{{}}}}', flush=True)
    """), encoding="utf-8")
    proc = worker.WorkerProcess([sys.executable, str(script)])
    start = time.monotonic()
    try:
        result = proc.wait(poll_interval=0.05)
        assert result.succeeded and time.monotonic() - start < 15
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text(encoding="utf-8")), 9)
            except ProcessLookupError:
                pass


def test_speed_presets_come_from_the_library_and_every_one_is_accepted(tmp_path):
    """One table of fast/balanced/best (LesionFactorizerLib.core.speed_presets), no copy here."""
    from LesionFactorizerLib.cli import build_parser
    from LesionFactorizerLib.core.speed_presets import SPEED_PRESETS

    assert worker.settings.BY_NAME["preset"].choices == tuple(SPEED_PRESETS)
    assert not hasattr(worker, "PRESETS")
    parser = build_parser()
    for preset in SPEED_PRESETS:
        request = worker.SegmentRequest.of(task="stroke", inputs={"dwi": "d", "adc": "a"}, output_dir=tmp_path,
                                           preset=preset)
        assert parser.parse_args(worker.build_segment_command("py", request)[3:]).preset == preset


def test_cancel_on_windows_kills_the_tree_without_a_console_window():
    """taskkill is a console program: started from Slicer's GUI without CREATE_NO_WINDOW it flashes a
    console. (Windows API value of the flag; the runner's own spawn uses the same constant.)"""
    argv, flags = worker.windows_kill_command(4321)
    assert argv == ["taskkill", "/F", "/T", "/PID", "4321"]
    assert flags & 0x08000000
    source = Path(worker.__file__).read_text(encoding="utf-8")
    assert source.count("creationflags=") == 1 and "creationflags=flags" in source  # the kill passes it
