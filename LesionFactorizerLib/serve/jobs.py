"""Jobs of the segmentation server: where they live, the queue, and the worker processes.

Each job has a random id and its own folder (``inputs/``, ``output/``, ``events.jsonl``); the
client that created it is its owner, and no other client can see it. Jobs wait in one queue
that every device's slot takes from (a free device takes the next job, so one slow case never
holds up a job another device could run). Each slot keeps one worker process (``spawn``: no
forked torch or CUDA state) that loads a model on its first job and keeps it for the next ones.
The worker writes the job's progress events into the job folder with the same ``Progress``
class as ``segment --progress jsonl``; the server reads them from there.

Cancel is SIGTERM to the worker (the run removes its temporary outputs and writes its ``error``
event), SIGKILL after a grace period; a worker that dies for any reason fails only the job it
was running, and the slot starts a fresh worker for the next job.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINAL = ("done", "error")
CANCEL_GRACE_S = 5.0


@dataclass
class Job:
    id: str
    owner: str
    folder: Path
    task: str
    settings: dict[str, Any]
    inputs: dict[str, Path] = field(default_factory=dict)
    state: str = "created"      # created → queued → running → done | failed | cancelled
    device: str = ""
    worker_pid: int | None = None
    cancel_requested: bool = False
    created: float = field(default_factory=time.time)
    ended: float | None = None

    @property
    def events_path(self) -> Path:
        return self.folder / "events.jsonl"

    @property
    def output(self) -> Path:
        return self.folder / "output"

    @property
    def active(self) -> bool:
        return self.state in ("created", "queued", "running")

    def events(self) -> list[dict]:
        """The complete event lines written so far (a line still being written is left for later)."""
        try:
            text = self.events_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        events = []
        for line in text.split("\n")[:-1]:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def append_event(self, event: dict) -> None:
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "state": self.state, "device": self.device,
                "worker_pid": self.worker_pid, "inputs": sorted(self.inputs)}


class Slot:
    """One device: its worker process and what it has done (``info``)."""

    def __init__(self, device: str):
        self.device = device
        self.process = None
        self.conn = None
        self.jobs_done = 0
        self.model_loads = 0
        self.workers_started = 0

    def ensure_worker(self, ctx) -> None:
        if self.process is not None and self.process.is_alive():
            return
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(self.device, child), daemon=True,
                                   name=f"lesion-factorizer-worker-{self.device}")
        self.process.start()
        child.close()
        self.conn = parent
        self.workers_started += 1

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(CANCEL_GRACE_S)
            if self.process.is_alive():
                self.process.kill()
        self.process.join(CANCEL_GRACE_S)
        self.process = None
        self.conn = None

    def info(self) -> dict[str, Any]:
        alive = self.process is not None and self.process.is_alive()
        return {"device": self.device, "jobs_done": self.jobs_done, "model_loads": self.model_loads,
                "workers_started": self.workers_started, "worker_pid": self.process.pid if alive else None}


class JobManager:
    def __init__(self, root: Path, devices: list[str], retention_s: float):
        import multiprocessing as mp

        self.root = root
        self.retention_s = retention_s
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.slots = [Slot(d) for d in devices]
        self._ctx = mp.get_context("spawn")
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._slot_loop, args=(s,), daemon=True,
                                          name=f"slot-{s.device}") for s in self.slots]
        self._threads.append(threading.Thread(target=self._expire_loop, daemon=True, name="retention"))
        for t in self._threads:
            t.start()

    # -- jobs ---------------------------------------------------------------------------------
    def create(self, owner: str, task: str, settings: dict[str, Any]) -> Job:
        job_id = secrets.token_urlsafe(18)
        folder = self.root / job_id
        (folder / "inputs").mkdir(parents=True, mode=0o700)
        job = Job(job_id, owner, folder, task, settings)
        with self.lock:
            self.jobs[job_id] = job
        return job

    def get(self, owner: str, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and secrets.compare_digest(job.owner, owner) else None

    def active_count(self, owner: str) -> int:
        return sum(1 for j in list(self.jobs.values()) if j.owner == owner and j.active)

    def start(self, job: Job) -> None:
        job.state = "queued"
        self.queue.put(job)

    def cancel(self, job: Job) -> None:
        job.cancel_requested = True
        if job.state in ("created", "queued"):
            self._end(job, "cancelled", {"event": "error", "message": "cancelled before it started"})

    def delete(self, job: Job) -> None:
        self.cancel(job)
        with self.lock:
            self.jobs.pop(job.id, None)
        if job.state != "running":   # a running job's folder goes when its worker has let go
            shutil.rmtree(job.folder, ignore_errors=True)

    def _end(self, job: Job, state: str, event: dict | None = None) -> None:
        if event is not None and not any(e.get("event") in FINAL for e in job.events()):
            job.append_event(event)
        job.state, job.ended, job.worker_pid = state, time.time(), None
        if job.id not in self.jobs:
            shutil.rmtree(job.folder, ignore_errors=True)

    def shutdown(self) -> None:
        self._stopping.set()
        for _ in self.slots:
            self.queue.put(None)
        for slot in self.slots:
            slot.stop()

    # -- the slots ----------------------------------------------------------------------------
    def _slot_loop(self, slot: Slot) -> None:
        while not self._stopping.is_set():
            job = self.queue.get()
            if job is None:
                return
            if job.state != "queued":
                continue   # cancelled or deleted while waiting
            try:
                self._run(slot, job)
            except Exception as exc:   # the slot must keep serving whatever happened to one job
                slot.stop()
                self._end(job, "failed", {"event": "error", "message": f"server failure: {type(exc).__name__}: {exc}"})

    def _run(self, slot: Slot, job: Job) -> None:
        from multiprocessing.connection import wait

        slot.ensure_worker(self._ctx)
        job.state, job.device, job.worker_pid = "running", slot.device, slot.process.pid
        slot.conn.send({"id": job.id, "task": job.task, "settings": job.settings,
                        "inputs": {k: str(v) for k, v in job.inputs.items()}, "output": str(job.output),
                        "events": str(job.events_path)})
        kill_at = None
        while True:
            ready = wait([slot.conn, slot.process.sentinel], timeout=0.2)
            if slot.conn in ready:
                try:
                    reply = slot.conn.recv()
                except (EOFError, OSError):
                    reply = None
                if reply is not None:
                    slot.jobs_done += 1
                    slot.model_loads += reply["model_loads"]
                    final = next((e for e in reversed(job.events()) if e.get("event") in FINAL), {})
                    self._end(job, "done" if final.get("event") == "done" else
                              "cancelled" if job.cancel_requested else "failed")
                    return
            if not slot.process.is_alive():
                code = slot.process.exitcode
                slot.stop()
                if job.cancel_requested:
                    self._end(job, "cancelled", {"event": "error", "message": "cancelled"})
                else:
                    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    self._end(job, "failed", {"event": "error", "message":
                              f"the worker process running this job ended unexpectedly ({how}); the job was "
                              "not finished: submit it again, or ask the server's operator to check its log"})
                return
            if job.cancel_requested and kill_at is None:
                os.kill(slot.process.pid, signal.SIGTERM)
                kill_at = time.monotonic() + CANCEL_GRACE_S
            elif kill_at is not None and time.monotonic() > kill_at:
                slot.process.kill()

    def _expire_loop(self) -> None:
        while not self._stopping.wait(10.0):
            now = time.time()
            for job in list(self.jobs.values()):
                since = job.ended if job.ended is not None else (job.created if job.state == "created" else None)
                if since is not None and now - since > self.retention_s:
                    self.delete(job)


# -- the worker process -----------------------------------------------------------------------
def worker_main(device: str, conn) -> None:
    """One device's worker: runs jobs one after the other with the models kept loaded."""
    if device not in ("cpu",):
        os.environ["CUDA_VISIBLE_DEVICES"] = device   # before torch starts: this GPU becomes cuda:0
    from LesionFactorizerLib.processmemory import configure_process_memory

    configure_process_memory()
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.pipeline.progress import Progress, terminate_cleanly
    from LesionFactorizerLib.pipeline.segment import Segmenter
    from LesionFactorizerLib.core.settings import SegmentSettings

    terminate_cleanly()   # cancel: SIGTERM ends the run with its error event, outputs cleaned up
    models: dict[tuple, list] = {}
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return   # the server is gone
        loads = 0
        with open(job["events"], "a", encoding="utf-8") as stream:
            progress = Progress("jsonl", stream=stream)
            try:
                with progress.errors_reported():
                    segmenter = Segmenter(SegmentSettings(task=job["task"], device="cpu" if device == "cpu" else "cuda",
                                                          **job["settings"]))
                    key = tuple(str(p) for p in segmenter.paths)
                    if key in models:
                        segmenter.loaded = models[key]
                    else:
                        models[key] = segmenter.models()
                        loads = 1
                    outputs = segmenter.segment(job["inputs"], job["output"], False, progress).outputs
                progress.done(outputs)
            except UserError:
                pass   # reported as the job's error event; the worker goes on
            except Exception:
                pass   # likewise ("unexpected failure: ..."); the models may be fine
        conn.send({"id": job["id"], "model_loads": loads})
