"""Launching the segmentation worker (``python -m LesionFactorizerLib segment``) and reading it.

Inference runs in a separate Python process so that Slicer stays responsive, a crash or a CUDA
out-of-memory error cannot take Slicer down, memory is returned on exit, and Cancel is simply
"kill the process tree". This file is the one home of that mechanism: it builds the command line
from the command line's contract (README: `segment`, `--progress jsonl`), starts the process in its own process group, reads its output on
a thread (the caller polls from a timer, so the GUI thread never blocks on a pipe), and turns the
outcome into a one-line message a user can act on.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.layout import NMF_LAYERS  # noqa: F401  (pure Python, like the imports below)
from LesionFactorizerLib.core import settings  # the segment settings' one definition and check
from LesionFactorizerModuleLib.progress import WorkerEvent, parse_line

# The device selector: the segment settings' --device choices with their titles.
_DEVICE_TITLES = {"auto": "Automatic (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)", "mps": "GPU (Apple MPS)"}
DEVICES = settings.DEVICES
DEVICE_CHOICES: tuple[tuple[str, str], ...] = tuple((d, _DEVICE_TITLES[d]) for d in DEVICES)
# The ms-new "Register baseline to follow-up" selector: the --register choices with their titles.
_REGISTER_TITLES = {"auto": "Automatic (when misaligned)", "rigid": "Rigid", "affine": "Rigid, then affine",
                    "never": "Never (warn only)"}
REGISTER_CHOICES: tuple[tuple[str, str], ...] = tuple((m, _REGISTER_TITLES[m]) for m in settings.REGISTER_MODES)
_INPUT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


# What the module asks of every worker run, on top of the segment settings' own defaults: JSON
# progress events to read, and NRRD, which keeps the full-precision direction matrix of oblique
# volumes (NIfTI's qform/sform may not).
WORKER_DEFAULTS: dict[str, Any] = {"format": "nrrd", "progress": "jsonl"}


@dataclass(frozen=True)
class SegmentRequest:
    """Everything one ``segment`` run needs: its input files, the output folder and the segment
    settings (``LesionFactorizerLib.core.settings.SegmentSettings``), the task among them;
    :meth:`of` makes one from the task and setting names with the module's defaults."""

    inputs: Mapping[str, str | os.PathLike]
    output_dir: str | os.PathLike
    settings: settings.SegmentSettings

    @classmethod
    def of(cls, task: str, inputs: Mapping[str, str | os.PathLike], output_dir: str | os.PathLike,
           **values: Any) -> SegmentRequest:
        """``values``: setting name → value; a setting not given keeps its default (``WORKER_DEFAULTS``
        over the library's)."""
        unknown = sorted(set(values) - set(settings.BY_NAME) - {"task"})
        if unknown:
            raise ValueError(f"Unknown segment setting(s) {', '.join(unknown)}; settings are: "
                             f"{', '.join(o.name for o in settings.OPTIONS if o.name != 'task')}.")
        return cls(dict(inputs), output_dir, settings.SegmentSettings(**{**WORKER_DEFAULTS, **values, "task": task}))

    @property
    def task(self) -> str:
        return self.settings.task

    def validate(self) -> None:
        """Raise ValueError with a user-readable message for an impossible request."""
        if not self.task:
            raise ValueError(f"No task selected; choose {settings.TASK_NAMES}.")
        if not self.inputs:
            raise ValueError("No input volumes given.")
        for name in self.inputs:
            if not _INPUT_NAME.match(name):
                raise ValueError(f"Input name {name!r} is not valid; use the task's input names.")
        try:
            self.settings.check()
        except UserError as exc:
            raise ValueError(str(exc)) from None


def build_segment_command(python: str | os.PathLike, request: SegmentRequest) -> list[str]:
    """The worker's argument list (no shell, so paths with spaces are safe)."""
    request.validate()
    args = [str(python), "-m", "LesionFactorizerLib", "segment", *request.settings.to_argv()]
    for name, path in request.inputs.items():
        args += ["--input", f"{name}={os.fspath(path)}"]
    return args + ["--output", os.fspath(request.output_dir)]


@dataclass
class CounterfactualRequest:
    """One "drop this component" run: ``counterfactual RESULT_DIR --layer L --component K``.

    ``result_dir`` holds the segmentation run's report.json and segmentation; ``inputs`` are where
    that run's input files are now (the module keeps them with the component maps)."""

    result_dir: str | os.PathLike
    layer: str
    component: int
    output_dir: str | os.PathLike
    inputs: Mapping[str, str | os.PathLike] = field(default_factory=dict)
    device: str = "auto"

    def validate(self) -> None:
        if self.layer not in NMF_LAYERS:
            raise ValueError(f"Unknown NMF layer {self.layer!r}.")
        if int(self.component) < 0:
            raise ValueError("The component number must be 0 or more.")
        if self.device not in DEVICES:
            raise ValueError(f"Unknown device {self.device!r}; choose one of {', '.join(DEVICES)}.")


def build_counterfactual_command(python: str | os.PathLike, request: CounterfactualRequest) -> list[str]:
    """The worker's argument list for a counterfactual (no shell)."""
    request.validate()
    args = [str(python), "-m", "LesionFactorizerLib", "counterfactual", os.fspath(request.result_dir),
            "--layer", request.layer, "--component", str(int(request.component)),
            "--output", os.fspath(request.output_dir), "--device", request.device, "--progress", "jsonl",
            "--no-picture"]   # Slicer shows the difference as a segmentation: no PNG to draw
    for name, path in request.inputs.items():
        args += ["--input", f"{name}={os.fspath(path)}"]
    return args


def worker_environment(base: Mapping[str, str], library_root: str | os.PathLike | None) -> dict[str, str]:
    """Environment for the worker: the library importable, output unbuffered and UTF-8.

    ``base`` should be the environment Slicer was started with (slicer.util.startupEnvironment()),
    not Slicer's own modified one. Nothing here touches Slicer's ``os.environ``.
    """
    env = dict(base)
    if library_root is not None:
        parts = [os.fspath(library_root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive as they are printed
    env["PYTHONIOENCODING"] = "utf-8"
    return env


@dataclass
class WorkerResult:
    """How a worker run ended."""

    returncode: int | None
    cancelled: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    error_event: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.cancelled

    def error_line(self) -> str:
        """The worker's own one-line explanation, if it gave one."""
        if self.error_event:
            return self.error_event
        for line in reversed(self.log):
            if line.startswith("error:"):
                return line[len("error:"):].strip()
        return ""


_HINTS: tuple[tuple[str, str], ...] = (
    (r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED",
     "The GPU ran out of memory: choose device CPU under Advanced, or the 'fast' preset."),
    (r"DefaultCPUAllocator|MemoryError|Cannot allocate memory",
     "The computer ran out of memory: close other programs, crop the volumes (Crop Volume module) "
     "or choose the 'fast' preset."),
    (r"No module named '?(torch|safetensors|einops|scipy|SimpleITK)",
     "A required Python package is missing in Slicer's Python: open the module, press Segment and "
     "accept the dependency installer (or run logic.setupPythonRequirements())."),
    (r"No module named '?LesionFactorizerLib",
     "The worker cannot find the LesionFactorizer library; reinstall the extension."),
    (r"Torch not compiled with CUDA|no CUDA-capable device|CUDA driver",
     "This PyTorch cannot use the GPU: choose device CPU, or reinstall PyTorch with CUDA support "
     "in the PyTorch Utils module."),
)


def failure_message(result: WorkerResult) -> str:
    """One line saying what went wrong and what to do — never a bare "check the logs"."""
    if result.cancelled:
        return "Segmentation cancelled."
    text = "\n".join(result.log + [result.error_event])
    hint = next((h for pattern, h in _HINTS if re.search(pattern, text)), "")
    reason = result.error_line()
    if not reason:
        # An unexpected failure: the last exception line of the traceback is the best summary.
        exception_lines = [l for l in result.log if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", l)]
        if exception_lines:
            reason = exception_lines[-1].strip()
        elif result.returncode is not None and result.returncode < 0:
            reason = f"the worker was stopped by signal {-result.returncode}"
            hint = hint or "This usually means the system ran out of memory; try the 'fast' preset or CPU."
        else:
            reason = f"the worker exited with code {result.returncode} without a message"
    if result.returncode == 1 and not hint:
        hint = "This is a bug; please report it together with the worker log."
    return f"{reason.rstrip('.')}." + (f" {hint}" if hint else "")


# Win32 CREATE_NO_WINDOW (0x08000000; the subprocess constant exists only on Windows): a console
# program started from Slicer's GUI would otherwise flash a console window.
CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)


def windows_kill_command(pid: int) -> tuple[list[str], int]:
    """(argv, creationflags) ending a worker tree on Windows: no process groups to signal there, so
    taskkill /T walks the tree (forcefully: Windows has no SIGTERM), without a console window."""
    return ["taskkill", "/F", "/T", "/PID", str(int(pid))], CREATE_NO_WINDOW


def _signal_tree(pid: int, sig: int, known: list | None = None) -> list:
    """Send ``sig`` to a worker and everything it started; returns the processes found (psutil).

    PythonSlicer is a launcher that runs the real interpreter as a child, and the interpreter may
    start its own workers; signalling only the direct child would leave the computation running.
    The worker runs in its own session, so its process group id is its pid; psutil (optional)
    also catches children that left the group. Never waits: the caller escalates later.
    """
    procs = list(known or [])
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            procs += [p for p in parent.children(recursive=True) + [parent] if p not in procs]
        except psutil.Error:
            pass
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
    if sys.platform == "win32":
        argv, flags = windows_kill_command(pid)
        subprocess.run(argv, capture_output=True, check=False, creationflags=flags)
        return procs
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    return procs


def _group_alive(pid: int) -> bool:
    if sys.platform == "win32":
        return False
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class WorkerProcess:
    """A running worker whose output is collected on a background thread.

    Use ``poll()`` from a GUI timer (returns the events that arrived, never blocks) or
    ``wait()`` for synchronous batch use. ``cancel()`` only sends SIGTERM to the whole process
    tree and returns at once (it runs on the GUI thread); ``poll()``/``running`` send SIGKILL to
    whatever is left once ``kill_grace_s`` has passed, and the run only counts as finished when
    the whole process group is gone.
    """

    kill_grace_s = 3.0

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills all of it
        self.args = list(args)
        self._proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, text=True, encoding="utf-8",
            errors="replace", bufsize=1, **kwargs)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="LesionFactorizerWorkerReader", daemon=True)
        self._reader.start()
        self._eof = False
        self._exited_at: float | None = None
        self._cancelled = False
        self._kill_deadline: float | None = None
        self._tree: list = []
        self.log: list[str] = []
        self.outputs: dict[str, Any] = {}
        self.error_event = ""

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def poll(self, timeout: float = 0.0) -> list[WorkerEvent]:
        """Events that arrived since the last call (waits at most ``timeout`` for the first)."""
        self._escalate()
        events: list[WorkerEvent] = []
        block = timeout > 0
        while True:
            try:
                line = self._queue.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                break
            block = False
            if line is None:
                self._eof = True
                break
            event = parse_line(line)
            if event.kind == "done":
                self.outputs = dict(event.outputs)
            elif event.kind == "error":
                self.error_event = event.message
            if event.kind == "log" or event.kind == "error":
                self.log.append(event.message if event.kind == "log" else f"error: {event.message}")
            events.append(event)
        return events

    @property
    def running(self) -> bool:
        """True until the process has exited *and* all its output has been consumed.

        A stray grandchild that inherited the pipe could keep it open after the worker exited;
        two seconds after the exit, with nothing left to read, the run counts as finished anyway.
        After cancel() the run lasts until the whole process group is gone (SIGKILL at the deadline).
        """
        self._escalate()
        if self._proc.poll() is None:
            return True
        if self._kill_deadline is not None and _group_alive(self._proc.pid):
            return True  # cancelled: a grandchild is still dying; the deadline will kill it
        if self._eof:
            return False
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        return not self._queue.empty() or time.monotonic() - self._exited_at < 2.0

    def cancel(self) -> None:
        """Ask the whole process tree to stop (SIGTERM) and return immediately."""
        if self._cancelled or (self._proc.poll() is not None and not _group_alive(self._proc.pid)):
            return
        self._cancelled = True
        self._tree = _signal_tree(self._proc.pid, signal.SIGTERM)
        self._kill_deadline = time.monotonic() + self.kill_grace_s

    def _escalate(self) -> None:
        """SIGKILL what survived SIGTERM, once the grace period is over (called from poll/running)."""
        if self._kill_deadline is None:
            return
        self._proc.poll()  # reap our direct child, otherwise its zombie keeps the group "alive"
        if not _group_alive(self._proc.pid) and self._proc.poll() is not None:
            self._kill_deadline = None
            return
        if time.monotonic() >= self._kill_deadline:
            _signal_tree(self._proc.pid, getattr(signal, "SIGKILL", signal.SIGTERM), self._tree)
            self._kill_deadline = None

    def wait(self, callback: Callable[[WorkerEvent], None] | None = None,
             poll_interval: float = 0.1, idle: Callable[[], None] | None = None) -> WorkerResult:
        """Block until the worker ends, passing each event to ``callback``.

        ``idle`` is called between polls (Slicer passes ``slicer.app.processEvents`` so the
        application repaints during a synchronous batch run).
        """
        while self.running:
            for event in self.poll(timeout=poll_interval):
                if callback is not None:
                    callback(event)
            if idle is not None:
                idle()
        return self.result()

    def result(self) -> WorkerResult:
        code = self._proc.poll()
        return WorkerResult(returncode=code, cancelled=self._cancelled, outputs=dict(self.outputs),
                            error_event=self.error_event, log=list(self.log))
