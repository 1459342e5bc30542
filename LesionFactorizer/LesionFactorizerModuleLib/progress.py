"""Parsing the worker's ``--progress jsonl`` stream (README: `--progress jsonl`).

The worker prints one JSON object per line on stdout; anything else on stdout/stderr (warnings,
tracebacks, the final ``error: ...`` line) is plain log text. We parse leniently: a malformed or
unknown line becomes a ``log`` event instead of an exception, because a progress display must never
take the run down.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerEvent:
    """One line of worker output, classified.

    kind is ``progress``, ``done``, ``error`` (a JSON error event) or ``log`` (anything else).
    """

    kind: str
    stage: str = ""
    fraction: float | None = None
    eta_s: float | None = None
    message: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    raw: str = ""


def _finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_line(line: str) -> WorkerEvent:
    """Classify one output line; never raises."""
    text = line.rstrip("\r\n")
    stripped = text.strip()
    if not stripped.startswith("{"):
        return WorkerEvent(kind="log", message=text, raw=text)
    try:
        data = json.loads(stripped)
    except ValueError:
        return WorkerEvent(kind="log", message=text, raw=text)
    if not isinstance(data, dict):
        return WorkerEvent(kind="log", message=text, raw=text)
    event = data.get("event")
    if event == "progress":
        fraction = _finite_or_none(data.get("fraction"))
        if fraction is not None:
            fraction = min(1.0, max(0.0, fraction))
        eta = _finite_or_none(data.get("eta_s"))
        if eta is not None and eta < 0:
            eta = None
        return WorkerEvent(kind="progress", stage=str(data.get("stage", "")), fraction=fraction,
                           eta_s=eta, message=str(data.get("message", "")), raw=text)
    if event == "done":
        outputs = data.get("outputs")
        return WorkerEvent(kind="done", outputs=outputs if isinstance(outputs, dict) else {},
                           message=str(data.get("message", "")), raw=text)
    if event == "error":
        return WorkerEvent(kind="error", message=str(data.get("message", "")).strip(), raw=text)
    if event == "warning":
        return WorkerEvent(kind="log", message=f"warning: {data.get('message', '')}", raw=text)
    # Other or future events are shown as text.
    return WorkerEvent(kind="log", message=str(data.get("message", text)), raw=text)


def format_eta(seconds: float | None) -> str:
    """Human ETA such as ``12 s``, ``3 min 05 s``; empty when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


STAGE_TITLES = {
    "read": "Reading inputs",
    "load": "Loading inputs",
    "validate": "Checking inputs",
    "preprocess": "Preprocessing",
    "model": "Loading model",
    "inference": "Segmenting",
    "components": "Computing NMF components",
    "postprocess": "Post-processing",
    "effects": "Ranking components by effect",
    "write": "Writing results",
    "download": "Downloading",   # models download
    "verify": "Checking the file",
}


def stage_title(stage: str) -> str:
    """Readable name of a worker stage (unknown stages are shown capitalised)."""
    if not stage:
        return "Working"
    return STAGE_TITLES.get(stage, stage.replace("_", " ").capitalize())


class ProgressTracker:
    """Turns a sequence of events into what the progress bar shows.

    The displayed percentage never goes backwards (a worker that restarts a stage, e.g. after a
    CUDA out-of-memory fallback to CPU, would otherwise make the bar jump back), and the text
    always names the stage and, when known, the remaining time.
    """

    def __init__(self) -> None:
        self.percent = 0
        self.stage = ""
        self.eta_s: float | None = None
        self.finished = False

    def update(self, event: WorkerEvent) -> bool:
        """Apply one event; True when the display changed."""
        before = (self.percent, self.stage, self.eta_s, self.finished)
        if event.kind == "progress":
            if event.stage:
                self.stage = event.stage
            if event.fraction is not None:
                self.percent = max(self.percent, int(math.floor(event.fraction * 100)))
            self.eta_s = event.eta_s
        elif event.kind == "done":
            self.percent = 100
            self.eta_s = None
            self.finished = True
        return before != (self.percent, self.stage, self.eta_s, self.finished)

    @property
    def bar_format(self) -> str:
        """QProgressBar format string (Qt fills in %p, the percentage)."""
        if self.finished:
            return "Done"
        eta = format_eta(self.eta_s)
        return f"{stage_title(self.stage)}: %p%" + (f" (about {eta} left)" if eta else "")

    @property
    def text(self) -> str:
        if self.finished:
            return "Done"
        eta = format_eta(self.eta_s)
        title = stage_title(self.stage)
        return f"{title}: {self.percent}%" + (f" (about {eta} left)" if eta else "")
