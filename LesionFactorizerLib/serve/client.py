"""A client of ``lesion-factorizer serve`` (standard library only; Python 3.9+, torch-free).

``batch --server`` and the Slicer module use it. It sends the input images' bytes as they are
(NIfTI or NRRD: voxels and geometry, no DICOM headers), follows the job's progress events, and
unpacks the result archive into an output folder, refusing archive entries that would land
outside it. Every failure is one :class:`UserError` line saying what to do.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import quote, urlsplit

from LesionFactorizerLib import __version__
from LesionFactorizerLib.core.errors import UserError

API_VERSION = 1
FINAL = ("done", "error")
TOKEN_ENV = "LESIONFACTORIZER_SERVER_TOKEN"   # where the server and its command-line clients find a token
# Segment settings the server decides for itself and refuses from a client: where and how its
# workers run, and the DICOM SEG (it needs the DICOM series, which never leaves the client).
SERVER_DECIDES = ("task", "device", "progress", "overwrite", "dicom_seg")


class Client:
    def __init__(self, url: str, token: str = "", timeout: float = 60.0):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"server address {url!r} is not an http(s) URL; give e.g. https://gpu-server.example:8765")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._parts = parts
        self.token = token.strip()
        self.timeout = timeout

    # -- one request --------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return cls(self._parts.hostname, self._parts.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None, length: Optional[int] = None,
                download: Optional[Path] = None) -> Any:
        """The JSON answer (or, with ``download``, the body written to that file)."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if isinstance(body, dict):
            body = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if body is not None:
            headers["Content-Length"] = str(length if length is not None else len(body))
            headers.setdefault("Content-Type", "application/octet-stream")
        conn = self._connection()
        try:
            conn.request(method, self._parts.path.rstrip("/") + path, body=body, headers=headers)
            response = conn.getresponse()
            if download is not None and response.status == 200:
                with open(download, "wb") as f:
                    shutil.copyfileobj(response, f, 1 << 20)
                return None
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()
        try:
            answer = json.loads(data.decode("utf-8")) if data else {}
        except ValueError:
            answer = {"error": data[:200].decode("utf-8", "replace").strip()}
        if response.status == 401:
            raise UserError(f"the server at {self.url} refused the token: {answer.get('error', 'unauthorised')}")
        if response.status >= 400:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise UserError(message or f"the server at {self.url} answered HTTP {response.status} {response.reason}")
        return answer

    def _unreachable(self, exc: Exception) -> UserError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        if isinstance(exc, socket.timeout):
            reason = f"no answer within {self.timeout:g} s"
        return UserError(f"cannot reach the segmentation server at {self.url} ({reason}); check the address, "
                         "the network and that the server is running")

    # -- the API ------------------------------------------------------------------------------
    def check(self) -> Dict[str, Any]:
        """The server's info; refuses a server of another version or a refused token."""
        version = self.request("GET", "/v1/version")
        if not isinstance(version, dict) or version.get("server") != "lesion-factorizer":
            raise UserError(f"{self.url} is not a LesionFactorizer segmentation server; check the address")
        if version.get("version") != __version__ or version.get("api") != API_VERSION:
            raise UserError(f"the server at {self.url} runs LesionFactorizer {version.get('version')}, this computer "
                            f"{__version__}; results could differ, so update one of them to match the other")
        return self.request("GET", "/v1/info")

    def submit(self, task: str, inputs: Dict[str, str], settings: Dict[str, Any]) -> str:
        """Create the job, upload its inputs, start it; returns the job id."""
        job = self.request("POST", "/v1/jobs", {"task": task, "settings": settings})
        job_id = job["id"]
        try:
            for name, path in inputs.items():
                path = Path(path)
                if not path.is_file():
                    raise UserError(f"input {name}: {path} is not a file; the server takes NIfTI or NRRD files "
                                    "(not DICOM folders): convert the series first")
                with open(path, "rb") as f:
                    self.request("PUT", f"/v1/jobs/{quote(job_id)}/inputs/{quote(name, safe='')}", body=f,
                                 length=os.fstat(f.fileno()).st_size)
            self.request("POST", f"/v1/jobs/{quote(job_id)}/start")
        except BaseException:
            self.delete(job_id, quiet=True)
            raise
        return job_id

    def events(self, job_id: str, after: int) -> Tuple[str, list, int]:
        answer = self.request("GET", f"/v1/jobs/{quote(job_id)}/events?after={int(after)}")
        return answer["state"], answer["events"], answer["next"]

    def cancel(self, job_id: str) -> None:
        self.request("POST", f"/v1/jobs/{quote(job_id)}/cancel")

    def delete(self, job_id: str, quiet: bool = False) -> None:
        try:
            self.request("DELETE", f"/v1/jobs/{quote(job_id)}")
        except UserError:
            if not quiet:
                raise

    def download(self, job_id: str, dest: Path) -> None:
        """Unpack the job's result into ``dest`` (created; files of the same names are replaced)."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".result-", suffix=".zip", dir=str(dest))
        os.close(fd)
        try:
            self.request("GET", f"/v1/jobs/{quote(job_id)}/result", download=Path(tmp))
            try:
                with zipfile.ZipFile(tmp) as archive:
                    for member in archive.infolist():
                        parts = PurePosixPath(member.filename).parts
                        if member.filename.startswith("/") or "\\" in member.filename or ".." in parts or not parts:
                            raise UserError(f"the server's result holds an entry outside its folder "
                                            f"({member.filename!r}); not unpacked")
                    archive.extractall(dest)
            except zipfile.BadZipFile:
                raise UserError("the server's result archive is damaged (the download broke off?); run again") \
                    from None
        finally:
            os.unlink(tmp)

    def run(self, task: str, inputs: Dict[str, str], settings: Dict[str, Any], dest: Path,
            on_event: Optional[Callable[[dict], None]] = None, cancelled: Optional[Callable[[], bool]] = None,
            poll_s: float = 0.5) -> Dict[str, Any]:
        """One case on the server: submit, follow, download into ``dest``, delete on the server.
        Returns the ``done`` event's outputs with paths under ``dest``; the job's error as UserError."""
        job_id = self.submit(task, inputs, settings)
        try:
            after, final, cancel_sent = 0, None, False
            while final is None:
                if cancelled is not None and cancelled() and not cancel_sent:
                    self.cancel(job_id)
                    cancel_sent = True
                _, events, after = self.events(job_id, after)
                for event in events:
                    if on_event is not None:
                        on_event(event)
                    if event.get("event") in FINAL:
                        final = event
                if final is None:
                    time.sleep(poll_s)
            if final["event"] == "error":
                raise UserError(final.get("message") or "the job failed on the server")
            self.download(job_id, dest)
        finally:
            self.delete(job_id, quiet=True)
        return {k: str(Path(dest) / v) if isinstance(v, str) else v for k, v in (final.get("outputs") or {}).items()}
