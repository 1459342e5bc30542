"""The server's HTTP API (FastAPI; its OpenAPI document is served at ``/openapi.json``).

A job: ``POST /v1/jobs`` (task + segment settings, checked by the same code as the command
line's) → ``PUT /v1/jobs/{id}/inputs/{name}`` once per input (the raw NIfTI/NRRD bytes as the
body) → ``POST /v1/jobs/{id}/start`` → ``GET /v1/jobs/{id}/events?after=N`` (or the server-sent
``/events/stream``) until a ``done`` or ``error`` event → ``GET /v1/jobs/{id}/result`` (a zip of
the output folder) → ``DELETE /v1/jobs/{id}``. ``POST /v1/jobs/{id}/cancel`` stops it.

Every request but ``/v1/version`` and ``/openapi.json`` needs the bearer token; a job is visible
to the client (token, or address on a token-less loopback server) that created it only. Errors
are ``{"error": "one line"}`` with the command line's wording.
"""

from __future__ import annotations

import hmac
import re
import time
import zipfile
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from LesionFactorizerLib import __version__
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.serve.client import API_VERSION, SERVER_DECIDES
from LesionFactorizerLib.serve.jobs import Job, JobManager
from LesionFactorizerLib.serve.uploads import HeaderReader, TooLarge

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class Config:
    work_dir: Path
    devices: list[str]
    tokens: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)      # names offered; empty: every installed model
    max_upload_bytes: int = 1 << 30
    max_voxels: int = 100_000_000
    max_jobs_per_client: int = 4
    requests_per_minute: int = 600
    retention_s: float = 3600.0


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _RateLimiter:
    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self.seen: dict[str, deque] = defaultdict(deque)

    def hit(self, key: str) -> None:
        now = time.monotonic()
        seen = self.seen[key]
        while seen and now - seen[0] > 60.0:
            seen.popleft()
        if len(seen) >= self.per_minute:
            raise ApiError(429, f"too many requests from this client (limit {self.per_minute} a minute); "
                           "wait a minute and try again")
        seen.append(now)


def create_app(config: Config) -> FastAPI:
    config.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    manager = JobManager(config.work_dir, config.devices, config.retention_s)
    limiter = _RateLimiter(config.requests_per_minute)
    app = FastAPI(title="LesionFactorizer segmentation server", version=__version__, docs_url=None, redoc_url=None,
                  description=__doc__)
    app.state.manager = manager   # its shutdown() stops the workers (the serve command calls it at exit)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'malformed')}"}, status_code=400)

    def client(request: Request) -> str:
        """The caller's identity (token number, or address on a token-less loopback server)."""
        address = request.client.host if request.client else "unknown"
        if not config.tokens:
            limiter.hit(address)
            return f"address {address}"
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given_b = given.strip().encode("utf-8")
        match = None
        for i, token in enumerate(config.tokens):   # every token compared, in constant time each
            if hmac.compare_digest(given_b, token.encode("utf-8")) and scheme.lower() == "bearer":
                match = i
        if match is None:
            limiter.hit(f"refused {address}")
            raise ApiError(401, "missing or wrong token: give the server's access token (Authorization: Bearer "
                           "TOKEN); ask the server's operator for one")
        limiter.hit(f"token {match}")
        return f"token {match}"

    def owned(job_id: str, who: str) -> Job:
        job = manager.get(who, job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} for this client (finished jobs are deleted after "
                           f"{config.retention_s / 60:g} minutes)")
        return job

    def public_path(job: Job, text: str) -> str:
        """Messages and outputs without the server's folders."""
        for path, shown in [(p, "the upload") for p in job.inputs.values()] + [(job.output, "."), (job.folder, ".")]:
            text = text.replace(str(path) + "/", "" if shown == "." else shown + "/").replace(str(path), shown)
        return text

    @app.get("/v1/version", summary="server and API version (no token needed)")
    def version() -> dict[str, Any]:
        return {"server": "lesion-factorizer", "version": __version__, "api": API_VERSION}

    @app.get("/v1/info", summary="models (the same cards as `models list`), tasks, devices and limits")
    def info(who: str = Depends(client)) -> dict[str, Any]:
        from LesionFactorizerLib.core.tasks import TASKS

        return {"server": "lesion-factorizer", "version": __version__, "api": API_VERSION,
                "devices": [s.info() for s in manager.slots], "models": _model_cards(config),
                "tasks": {name: {"inputs": list(t.input_names)} for name, t in TASKS.items()},
                "limits": {"max_upload_bytes": config.max_upload_bytes, "max_voxels": config.max_voxels,
                           "max_jobs_per_client": config.max_jobs_per_client,
                           "requests_per_minute": config.requests_per_minute, "retention_s": config.retention_s}}

    @app.post("/v1/jobs", status_code=201, summary="create a job: task and segment settings (option names)")
    def create(body: dict[str, Any], who: str = Depends(client)) -> dict[str, Any]:
        task, settings = body.get("task"), body.get("settings") or {}
        if not isinstance(task, str) or not isinstance(settings, dict):
            raise ApiError(400, "give {\"task\": NAME, \"settings\": {option: value}}")
        try:
            settings = _checked_settings(task, settings, config)
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
        if manager.active_count(who) >= config.max_jobs_per_client:
            raise ApiError(429, f"this client already has {config.max_jobs_per_client} unfinished job(s), the "
                           "server's limit; wait for one to finish")
        job = manager.create(who, task, settings)
        return job.public()

    @app.put("/v1/jobs/{job_id}/inputs/{name}", summary="upload one input: the NIfTI or NRRD file's bytes as the body",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(job_id: str, name: str, request: Request, who: str = Depends(client)) -> dict[str, Any]:
        job = owned(job_id, who)
        if job.state != "created":
            raise ApiError(409, f"job {job_id} has already started; inputs cannot change now")
        from LesionFactorizerLib.core.tasks import get_task

        inputs = get_task(job.task).input_names
        if name not in inputs:
            raise ApiError(400, f"task {job.task} has no input {name!r}; its inputs are {', '.join(inputs)}")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_upload_bytes):
            raise ApiError(413, f"the upload is {length} bytes; this server takes at most "
                           f"{config.max_upload_bytes:,} bytes per image")
        folder = job.folder / "inputs"
        part = folder / f".{name}.part"
        reader, pending, received = HeaderReader(config.max_voxels), [], 0
        try:
            with open(part, "wb") as f:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > config.max_upload_bytes:
                        raise TooLarge(f"the upload is over this server's limit of {config.max_upload_bytes:,} "
                                       "bytes per image")
                    if reader.header is None:   # nothing is stored before the header has been judged
                        pending.append(chunk)
                        if reader.feed(chunk) is None:
                            continue
                        chunk, pending = b"".join(pending), []
                    f.write(chunk)
            header = reader.finish()
            path = folder / f"{name}{header.suffix}"
            for old in folder.glob(f"{name}.*"):
                old.unlink()
            part.replace(path)
        except TooLarge as exc:
            part.unlink(missing_ok=True)
            raise ApiError(413, str(exc)) from None
        except UserError as exc:
            part.unlink(missing_ok=True)
            raise ApiError(415, f"input {name}: {exc}") from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        job.inputs[name] = path
        try:   # the command line's checks of an input, before anything else is done with it
            from LesionFactorizerLib.pipeline.io import read_image

            image, _, sha = await run_in_threadpool(read_image, path, name)
        except UserError as exc:
            job.inputs.pop(name, None)
            path.unlink(missing_ok=True)
            raise ApiError(422, public_path(job, str(exc).replace(str(path), "the upload"))) from None
        return {"name": name, "format": header.suffix.lstrip("."), "size": list(image.GetSize()), "sha256": sha}

    @app.post("/v1/jobs/{job_id}/start", status_code=202, summary="queue the job once its inputs are uploaded")
    def start(job_id: str, who: str = Depends(client)) -> dict[str, Any]:
        job = owned(job_id, who)
        if job.state != "created":
            raise ApiError(409, f"job {job_id} is {job.state}; it can be started once")
        if not job.inputs:
            raise ApiError(400, "upload the inputs before starting the job")
        manager.start(job)
        return job.public()

    @app.get("/v1/jobs/{job_id}", summary="the job's state")
    def status(job_id: str, who: str = Depends(client)) -> dict[str, Any]:
        return owned(job_id, who).public()

    def public_events(job: Job, after: int) -> list[dict]:
        events = job.events()[max(0, after):]
        out = []
        for e in events:
            e = dict(e)
            if "message" in e:
                e["message"] = public_path(job, str(e["message"]))
            if e.get("event") == "done":
                e["outputs"] = {k: public_path(job, v) if isinstance(v, str) else v
                                for k, v in (e.get("outputs") or {}).items()}
            out.append(e)
        return out

    @app.get("/v1/jobs/{job_id}/events", summary="progress events (as `segment --progress jsonl`) from number `after`")
    def events(job_id: str, after: int = 0, who: str = Depends(client)) -> dict[str, Any]:
        job = owned(job_id, who)
        state = job.state   # read first: the events of a finished job are complete
        out = public_events(job, after)
        return {"state": state, "events": out, "next": max(0, after) + len(out)}

    @app.get("/v1/jobs/{job_id}/events/stream", summary="progress events as server-sent events")
    def stream(job_id: str, who: str = Depends(client)):
        import asyncio
        import json

        job = owned(job_id, who)

        async def feed():
            sent = 0
            while True:
                state = job.state
                for e in public_events(job, sent):
                    sent += 1
                    yield f"data: {json.dumps(e)}\n\n"
                if state not in ("created", "queued", "running") or job.id not in manager.jobs:
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(feed(), media_type="text/event-stream")

    @app.post("/v1/jobs/{job_id}/cancel", summary="stop the job (its worker process is ended)")
    def cancel(job_id: str, who: str = Depends(client)) -> dict[str, Any]:
        job = owned(job_id, who)
        manager.cancel(job)
        return job.public()

    @app.get("/v1/jobs/{job_id}/result", summary="the output folder as one zip archive", response_class=FileResponse)
    async def result(job_id: str, who: str = Depends(client)):
        job = owned(job_id, who)
        if job.state != "done":
            raise ApiError(409, f"job {job_id} is {job.state}; its result can be downloaded when it is done")
        archive = await run_in_threadpool(_zip_folder, job.output, job.folder / "result.zip")
        return FileResponse(archive, media_type="application/zip", filename="result.zip")

    @app.delete("/v1/jobs/{job_id}", summary="cancel if running, then delete the job and all its files")
    def delete(job_id: str, who: str = Depends(client)) -> dict[str, Any]:
        manager.delete(owned(job_id, who))
        return {"deleted": job_id}

    return app


def _zip_folder(folder: Path, archive: Path) -> Path:
    if not archive.exists():
        tmp = archive.with_name(".result.zip.part")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    z.write(path, path.relative_to(folder).as_posix())
        tmp.replace(archive)
    return archive


def _model_cards(config: Config) -> list[dict[str, Any]]:
    """The cards ``models list --json`` prints, for the models this server offers (no server paths)."""
    from LesionFactorizerLib.modelfile import list_models

    return [{"name": e.name, "source": e.source, "task": (e.metadata or {}).get("task"),
             "description": (e.metadata or {}).get("description"), "problem": e.problem or None}
            for e in list_models() if not config.models or e.name in config.models]


def _checked_settings(task: str, given: dict[str, Any], config: Config) -> dict[str, Any]:
    """The client's settings, checked like the command line's; model names become this server's files."""
    from LesionFactorizerLib.modelfile import list_models
    from LesionFactorizerLib.pipeline.segment import Segmenter
    from LesionFactorizerLib.core.settings import BY_NAME, SegmentSettings
    from LesionFactorizerLib.core.tasks import get_task

    get_task(task)
    for key in given:
        if key not in BY_NAME or key in SERVER_DECIDES:
            allowed = ", ".join(o for o in BY_NAME if o not in SERVER_DECIDES)
            raise UserError(f"setting {key!r} cannot be given to this server; settings are: {allowed}")
    SegmentSettings.from_json(given)   # each value's JSON type
    settings = {key: value for key, value in given.items() if value is not None}
    entries = {e.name: e for e in list_models(task) if not e.problem and (not config.models or e.name in config.models)}
    names = settings.pop("models", None) or []
    for name in names:
        if not _NAME.match(name) or name not in entries:
            raise UserError(f"this server has no {task} model {name!r}; its {task} models are: "
                            f"{', '.join(entries) or 'none'}")
    if not names:
        if not entries:
            raise UserError(f"this server has no model for task {task!r}")
        default = get_task(task).default_model
        names = [default if default in entries else next(iter(entries))]
    settings["models"] = [str(entries[n].path) for n in names]
    # the one check of the settings and of the models' agreement with the task (torch-free)
    Segmenter(SegmentSettings(task=task, **settings))
    return settings
