"""Progress reporting: a tqdm bar, JSON lines (README: `--progress jsonl`) or nothing.

JSON-lines events, one object per line on stdout (the Slicer module parses exactly these):

- ``{"event": "progress", "stage": S, "fraction": F, "eta_s": E|null, "message": M}`` — F is the
  overall fraction in [0, 1] and never decreases;
- ``{"event": "warning", "message": M}`` — as soon as the warning arises;
- ``{"event": "done", "outputs": {...}}`` — last line on success;
- ``{"event": "error", "message": M}`` — last line on failure (M is the one-line error), also
  when the run is stopped by SIGTERM or SIGINT, or the command line is wrong.

Exactly one of ``done`` / ``error`` ends every run.

Stages of one case (``segment``), in order: read, model, preprocess, inference, postprocess,
effects (``--effects`` only), components, write (the model comes before preprocessing: its stride
sets the box alignment). The effects stage has no fixed weight: once the model is loaded the
Segmenter gives it the weight its cost implies (:func:`.effects.stage_weight`, derived from the
inference and postprocess weights) through :meth:`Progress.replan`.

``batch`` runs its cases quietly and reports per case instead: after each case
``{"event": "case", "case_id": ID, "status": "done"|"skipped"|"failed", "message": M, "seconds": S}``
followed by a progress event with stage ``batch`` (F = cases finished / cases); its ``done``
event's outputs are ``{"summary": CSV path, "dir": output folder}``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time

BATCH_STAGE = "batch"
STAGES = (("read", 0.05), ("model", 0.04), ("preprocess", 0.05), ("inference", 0.70), ("postprocess", 0.05),
          ("effects", 0.0), ("components", 0.05), ("write", 0.06))


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM (Slicer's Cancel, a batch scheduler's time limit), so that
    ``finally`` blocks remove temporary outputs and the run ends with its final event."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def terminate_cleanly() -> None:
    """SIGTERM → :class:`Terminated` (default handling would end the process without a word)."""
    def handler(signum, frame):
        raise Terminated(signum)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:   # not the main thread
        pass


def report_usage_error(argv: list[str], message: str, stream=None) -> None:
    """A wrong command line ends a ``--progress jsonl`` run with its ``error`` event too."""
    for i, arg in enumerate(argv):
        if arg == "--progress=jsonl" or (arg == "--progress" and argv[i + 1:i + 2] == ["jsonl"]):
            stream = stream or sys.stdout
            stream.write(json.dumps({"event": "error", "message": message}) + "\n")
            stream.flush()
            return


class Progress:
    def __init__(self, mode: str = "bar", stream=None, min_interval: float = 0.25, stages=STAGES):
        if mode not in ("bar", "jsonl", "none"):
            raise ValueError(mode)
        self.human = mode == "bar"   # a person (or their log file) reads stderr
        if mode == "bar" and not sys.stderr.isatty():
            mode = "none"   # a bar redrawn into a log file or pipe is noise; errors stay one line
        self.mode = mode
        self.stream = stream or sys.stdout
        self.min_interval = min_interval
        self.fraction = 0.0
        self.stage_name = ""
        self.t0 = time.monotonic()
        self._last_emit = 0.0
        self._bar = None
        self._ended = False   # the final done/error event was emitted
        self._stages = list(stages)   # (name, weight) in order; a case's STAGES by default
        self._offsets = {}   # name -> (start, share), fractions of the whole bar
        total = sum(w for _, w in self._stages)
        acc = 0.0
        for name, weight in self._stages:
            self._offsets[name] = (acc / total, weight / total)
            acc += weight

    # -- public -------------------------------------------------------------------------------
    def stage(self, name: str, message: str = "") -> None:
        self.stage_name = name
        self.update(0.0, message=message, force=True)

    def replan(self, weights: dict[str, float]) -> None:
        """New weights for some of the stages after the current one, once a run knows what they cost:
        the stages after the current one share what is left of the bar in proportion to their
        weights (the new ones, else their old ones), so the bar neither moves back nor jumps; the
        current stage ends where it stands."""
        names = [n for n, _ in self._stages]
        later = self._stages[names.index(self.stage_name) + 1:] if self.stage_name in names else self._stages
        unknown = set(weights) - {n for n, _ in later}
        if unknown:
            raise ValueError(f"cannot replan stage(s) {sorted(unknown)}: not after stage {self.stage_name!r}")
        later = [(n, float(weights.get(n, w))) for n, w in later]
        total = sum(w for _, w in later)
        if self.stage_name in self._offsets:
            self._offsets[self.stage_name] = (self.fraction, 0.0)
        acc = self.fraction
        for name, weight in later:
            share = (1.0 - self.fraction) * weight / total if total > 0 else 0.0
            self._offsets[name] = (acc, share)
            acc += share
        self._stages = self._stages[:len(self._stages) - len(later)] + later

    @contextlib.contextmanager
    def timed(self, name: str, message: str, timings: dict):
        """A stage whose wall time goes into ``timings[name]`` (report.json ``timings_s``)."""
        self.stage(name, message)
        start = time.monotonic()
        try:
            yield
        finally:
            timings[name] = time.monotonic() - start

    def update(self, within: float, message: str = "", force: bool = False) -> None:
        """``within``: fraction of the current stage done."""
        start, weight = self._offsets.get(self.stage_name, (self.fraction, 0.0))
        overall = min(1.0, start + weight * max(0.0, min(1.0, within)))
        self.fraction = max(self.fraction, overall)
        now = time.monotonic()
        if not force and now - self._last_emit < self.min_interval:
            return
        self._last_emit = now
        self._emit_progress(message)

    def warning(self, message: str) -> None:
        if self.mode == "jsonl":
            self._json({"event": "warning", "message": message})
        elif self.mode == "bar":
            self._close_bar()
            print(f"warning: {message}", file=sys.stderr)

    def case_done(self, case_id: str, status: str, message: str, seconds: float, finished: int, total: int) -> None:
        """One case of a batch finished (or was skipped or failed): ``finished`` of ``total``."""
        self.stage_name = BATCH_STAGE
        self.fraction = max(self.fraction, min(1.0, finished / max(total, 1)))
        if self.mode == "jsonl":
            self._json({"event": "case", "case_id": case_id, "status": status, "message": message,
                        "seconds": round(seconds, 2)})
        elif self.human and status == "failed":
            self._close_bar()
            print(f"{case_id}: FAILED: {message}", file=sys.stderr)
        self._last_emit = time.monotonic()
        self._emit_progress(case_id)

    def done(self, outputs: dict, message: str = "") -> None:
        if self._ended:
            return
        self._ended = True
        self.fraction = 1.0
        if self.mode == "jsonl":
            self._json({"event": "progress", "stage": self.stage_name or "write", "fraction": 1.0, "eta_s": 0.0,
                        "message": ""})
            done = {"event": "done", "outputs": outputs}
            if message:
                done["message"] = message
            self._json(done)
        elif self.mode == "bar":
            if self._bar is not None:
                self._bar.n = self._bar.total
                self._bar.refresh()
            self._close_bar()

    @contextlib.contextmanager
    def errors_reported(self):
        """Report any failure inside the block as the final ``error`` event, then re-raise."""
        from LesionFactorizerLib.core.errors import UserError

        try:
            yield
        except UserError as exc:
            self.error(str(exc))
            raise
        except Terminated as exc:
            message = f"terminated by {signal.Signals(exc.signum).name}; results of the unfinished work were " \
                      "not kept"
            self.error(message)
            print(f"error: {message}", file=sys.stderr)
            raise
        except KeyboardInterrupt:
            self.error("interrupted (SIGINT); results of the unfinished work were not kept")
            raise
        except BaseException as exc:
            if not isinstance(exc, SystemExit):
                self.error(f"unexpected failure: {type(exc).__name__}: {exc}")
            raise

    def error(self, message: str) -> None:
        if self._ended:
            return
        self._ended = True
        if self.mode == "jsonl":
            self._json({"event": "error", "message": message})
        if self._bar is not None:
            self._bar.leave = False   # clear the bar so the error is the only line left
        self._close_bar()

    # -- internals ----------------------------------------------------------------------------
    def eta(self) -> float | None:
        elapsed = time.monotonic() - self.t0
        if self.fraction < 0.02 or elapsed < 0.5:
            return None
        return round(elapsed * (1.0 - self.fraction) / self.fraction, 1)

    def _emit_progress(self, message: str) -> None:
        if self.mode == "jsonl":
            self._json({"event": "progress", "stage": self.stage_name, "fraction": round(self.fraction, 4),
                        "eta_s": self.eta(), "message": message})
        elif self.mode == "bar":
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=1000, file=sys.stderr, bar_format="{desc:<12} {percentage:3.0f}%|{bar}| "
                                 "[{elapsed}<{remaining}]", dynamic_ncols=True)
            self._bar.set_description_str(self.stage_name)
            self._bar.n = int(self.fraction * 1000)
            self._bar.refresh()

    def _json(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Warnings(list):
    """The warnings of a run, for report.json, each also shown the moment it is added (a JSON-lines
    ``warning`` event or a stderr line), whichever stage adds it."""

    def __init__(self, progress: Progress):
        super().__init__()
        self._progress = progress

    def append(self, message: str) -> None:
        super().append(message)
        self._progress.warning(message)

    def extend(self, messages) -> None:
        for message in messages:
            self.append(message)
