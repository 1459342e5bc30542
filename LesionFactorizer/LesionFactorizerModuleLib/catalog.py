"""The "Get models…" dialog's logic: the catalogue as table rows, downloads in the worker, delete.

The catalogue is read here (``LesionFactorizerLib.catalog``: torch-free, small JSON). The download
itself runs in the worker process (``python -m LesionFactorizerLib models download NAME
--progress jsonl``), like a segmentation: the GUI stays responsive, its progress arrives as the
same JSON events, Cancel is the worker's SIGTERM (the library then removes its temporary file),
and the checks — size, SHA-256, the model file's integrity, the entry's task — are the command
line's own. The Qt dialog (``catalog_dialog.py``) only shows what this file computes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from LesionFactorizerLib import catalog
from LesionFactorizerModuleLib.progress import ProgressTracker
from LesionFactorizerModuleLib.worker import WorkerProcess, WorkerResult, failure_message

COLUMNS = ("Model", "Task", "Status", "Version", "Size", "Licence", "On this computer")
_STATE_TEXT = {"bundled": "bundled", "downloaded": "downloaded", "other": "another file of this name", "": "—"}


@dataclass(frozen=True)
class CatalogRow:
    entry: catalog.CatalogEntry
    state: str          # catalog.installed: bundled, downloaded, other or ""
    path: Path | None

    @property
    def cells(self) -> tuple[str, ...]:
        e = self.entry
        return (e.name, e.task, e.status, e.version, f"{e.size / 1e6:.1f} MB", e.license, _STATE_TEXT[self.state])

    @property
    def tooltip(self) -> str:
        sample = self.entry.sample
        tried_on = f"the bundled {sample.bundled} sample case" if sample.bundled else sample.url
        return f"{self.entry.description}\nTry it on: {tried_on}\nFrom: {self.entry.url}"

    @property
    def can_download(self) -> bool:
        """Not yet here as this very file (a different file of that name is replaced after asking)."""
        return self.state in ("", "other")

    @property
    def needs_overwrite(self) -> bool:
        return self.state == "other"

    @property
    def can_delete(self) -> bool:
        """Only what was downloaded; bundled models stay."""
        return self.state == "downloaded"


def catalog_rows(source: str | None = None) -> tuple[catalog.Catalog, list[CatalogRow]]:
    """The catalogue (``source``, else ``$LESIONFACTORIZER_CATALOG``, else the bundled one) and one
    row per entry; raises ``UserError`` with a one-line reason when it cannot be read."""
    found = catalog.load_catalog(source, timeout=10)
    return found, [CatalogRow(e, *catalog.installed(e)) for e in found.models]


def download_command(python: str | os.PathLike, name: str, catalog_url: str, overwrite: bool = False) -> list[str]:
    """The worker's argument list for one download (no shell), from the catalogue the dialog showed."""
    args = [os.fspath(python), "-m", "LesionFactorizerLib", "models", "download", name, "--catalog", catalog_url,
            "--progress", "jsonl"]
    return args + (["--overwrite"] if overwrite else [])


class Download:
    """One download running in the worker, polled from a GUI timer."""

    def __init__(self, name: str, start: Callable[[Sequence[str]], WorkerProcess], python: str | os.PathLike,
                 catalog_url: str, overwrite: bool = False):
        self.name = name
        self.tracker = ProgressTracker()
        self.process = start(download_command(python, name, catalog_url, overwrite))
        self.result: WorkerResult | None = None

    def poll(self) -> bool:
        """Apply the events that arrived; True once the worker has ended (``result`` is set)."""
        running = self.process.running   # False only once the output was read to its end
        for event in self.process.poll():
            self.tracker.update(event)
        if self.result is None and not running:
            self.result = self.process.result()
        return self.result is not None

    def cancel(self) -> None:
        self.process.cancel()

    @property
    def message(self) -> str:
        """One line for the dialog: what happened, or why not and what to do."""
        if self.result is None:
            return self.tracker.text
        if self.result.succeeded:
            return f"{self.name}: installed ({self.result.outputs.get('model', '')})."
        if self.result.cancelled:
            return f"{self.name}: download cancelled; nothing was installed."
        return f"{self.name}: {failure_message(self.result)}"
