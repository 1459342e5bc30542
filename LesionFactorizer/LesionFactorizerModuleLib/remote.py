"""Segmenting on a department server ("Process on: Server") instead of this computer.

:class:`RemoteRun` behaves like :class:`worker.WorkerProcess` (``poll``, ``running``, ``cancel``,
``wait``, ``result``), so the module's progress bar, Cancel and result import run unchanged: it
uploads the input files the module exported (NRRD: voxels and geometry, no DICOM headers), follows
the job's progress events, and unpacks the result into the same output folder a local worker
would write. The HTTP work runs on a thread (``LesionFactorizerLib.serve.client``, standard
library only), so the GUI thread never waits on the network.

The server's address and token live in Slicer's application settings under :data:`SETTINGS`,
never in the scene (a saved scene must not carry a credential).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.serve.client import SERVER_DECIDES, Client
from LesionFactorizerModuleLib.progress import WorkerEvent, parse_line
from LesionFactorizerModuleLib.worker import SegmentRequest, WorkerProcess, WorkerResult

# "Process on" choices with their titles, and the application-settings keys (qt.QSettings).
PROCESS_CHOICES: tuple[tuple[str, str], ...] = (("local", "This computer"), ("server", "Server"))
SETTINGS = {"process_on": "LesionFactorizer/processOn", "url": "LesionFactorizer/serverURL",
            "token": "LesionFactorizer/serverToken"}


def server_settings(request: SegmentRequest) -> dict[str, Any]:
    """The request's segment settings as the server takes them: what it decides left out, models by name."""
    from LesionFactorizerLib.core.settings import BY_NAME

    if request.settings.dicom_seg:
        raise ValueError("A DICOM SEG is made where the DICOM series is: choose 'Process on: This computer' "
                         "for it.")
    values = {k: v for k, v in request.settings.values().items()
              if k not in SERVER_DECIDES and v not in (None, [], BY_NAME[k].default)}
    if values.get("models"):   # the module lists this computer's model files; the server knows them by name
        values["models"] = [Path(m).stem if str(m).endswith(".safetensors") else str(m) for m in values["models"]]
    return values


class RemoteRun:
    """One segmentation on the server, read like a local worker process."""

    def __init__(self, url: str, token: str, request: SegmentRequest, timeout: float = 60.0):
        request.validate()
        self.settings = server_settings(request)
        self.client = Client(url, token, timeout=timeout)
        self.request = request
        self.log: list[str] = []
        self.outputs: dict[str, Any] = {}
        self.error_event = ""
        self._queue: queue.Queue[WorkerEvent | None] = queue.Queue()
        self._cancel = threading.Event()
        self._returncode: int | None = None
        self._done = False
        self._thread = threading.Thread(target=self._run, name="LesionFactorizerRemoteRun", daemon=True)
        self._thread.start()

    def _emit(self, event: dict) -> None:
        self._queue.put(parse_line(json.dumps(event)))

    def _run(self) -> None:
        try:
            self.client.check()
            self._emit({"event": "progress", "stage": "upload", "fraction": 0.0, "eta_s": None,
                        "message": f"sending the inputs to {self.client.url}"})
            outputs = self.client.run(self.request.task, {k: os.fspath(v) for k, v in self.request.inputs.items()},
                                      self.settings, Path(self.request.output_dir), on_event=self._emit,
                                      cancelled=self._cancel.is_set)
            self.outputs, self._returncode = outputs, 0
        except UserError as exc:
            self._returncode = 2
            if not self._cancel.is_set():
                self._emit({"event": "error", "message": str(exc)})
        except Exception as exc:   # a bug here must end the run with a message, not hang it
            self._returncode = 1
            self._emit({"event": "error", "message": f"unexpected failure: {type(exc).__name__}: {exc}"})
        finally:
            self._queue.put(None)

    def poll(self, timeout: float = 0.0) -> list[WorkerEvent]:
        events: list[WorkerEvent] = []
        block = timeout > 0
        while True:
            try:
                event = self._queue.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                break
            block = False
            if event is None:
                self._done = True
                break
            if event.kind == "done":
                self.outputs = dict(event.outputs)
            elif event.kind == "error":
                self.error_event = event.message
                self.log.append(f"error: {event.message}")
            events.append(event)
        return events

    @property
    def running(self) -> bool:
        return not self._done or self._thread.is_alive()

    def cancel(self) -> None:
        """Ask the server to stop the job; returns at once (the thread sends the request)."""
        self._cancel.set()

    wait = WorkerProcess.wait   # the same loop over poll / running / result

    def result(self) -> WorkerResult:
        return WorkerResult(returncode=self._returncode, cancelled=self._cancel.is_set(), outputs=dict(self.outputs),
                            error_event=self.error_event, log=list(self.log))
