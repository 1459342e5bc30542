"""`lesion-factorizer serve` and its clients, against a real server process on localhost.

One server (token file with two tokens, small caps, one CPU device) serves the module's tests;
the inputs are the stroke sample cropped around its lesion (30³ voxels) so a job takes seconds,
and the whole sample where a job must still be running when it is cancelled or killed.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from helpers import REPO

from LesionFactorizerLib.core.errors import UserError  # noqa: E402
from LesionFactorizerLib.serve.client import Client  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLES = REPO / "Resources" / "SampleData"
TOKENS = ("alice-token-0123456789abcdef", "bob-token-0123456789abcdef")
MAX_UPLOAD = 3 * 1024 * 1024
MAX_VOXELS = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "--threads", "1", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, encoding="utf-8", **kwargs)


class Server:
    def __init__(self, tmp: Path, *extra: str, tokens=TOKENS):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work = tmp / "work"
        args = [sys.executable, "-m", "LesionFactorizerLib", "--threads", "1", "serve", "--port", str(self.port),
                "--work-dir", str(self.work), *extra]
        if tokens:
            token_file = tmp / "tokens.txt"
            token_file.write_text("# one per workstation\n" + "\n".join(tokens) + "\n", encoding="utf-8")
            args += ["--token-file", str(token_file)]
        self.proc = subprocess.Popen(args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                Client(self.url).request("GET", "/v1/version")
                return
            except UserError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not start: {self.proc.stderr.read()}")
                time.sleep(0.3)

    def client(self, token: str = TOKENS[0]) -> Client:
        return Client(self.url, token)

    def stop(self) -> None:
        """SIGTERM, then nothing of the server's process group may be left (no orphan workers)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.killpg(self.proc.pid, signal.SIGKILL)
        raise AssertionError("processes of the server were left running after it stopped")

    def job_files(self) -> list[Path]:
        return sorted(p for p in self.work.rglob("*") if p.is_file()) if self.work.exists() else []


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, Path]:
    """The stroke sample cropped to 30³ voxels around its lesion (NIfTI dwi, NRRD adc) and the whole sample."""
    folder = tmp_path_factory.mktemp("case")
    label = sitk.ReadImage(str(SAMPLES / "stroke_label.nii.gz"))
    centre = np.round(np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(axis=0)).astype(int)[::-1]
    paths = {}
    for name, suffix in (("dwi", ".nii.gz"), ("adc", ".nrrd")):
        image = sitk.ReadImage(str(SAMPLES / f"stroke_{name}.nii.gz"))
        lo = np.maximum(centre - 15, 0)
        crop = sitk.RegionOfInterest(image, [30, 30, 30], [int(v) for v in lo])
        paths[name] = folder / f"{name}{suffix}"
        sitk.WriteImage(crop, str(paths[name]), True)
        paths[f"full_{name}"] = SAMPLES / f"stroke_{name}.nii.gz"
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("server"), "--max-upload-mb", str(MAX_UPLOAD / 1024 / 1024),
               "--max-voxels", str(MAX_VOXELS), "--max-jobs-per-client", "6")
    yield s
    s.stop()


def _raw(server: Server, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         send_body: bool = True) -> tuple[int, dict]:
    """One request by hand; ``send_body=False`` sends only the headers and reads the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        if send_body:
            conn.request(method, path, body=body, headers=headers or {})
        else:
            conn.putrequest(method, path)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.endheaders()
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        conn.close()


def _auth(token: str = TOKENS[0]) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _new_job(server: Server, token: str = TOKENS[0]) -> str:
    status, job = _raw(server, "POST", "/v1/jobs", json.dumps({"task": "stroke", "settings": {}}).encode(),
                       {**_auth(token), "Content-Type": "application/json"})
    assert status == 201, job
    return job["id"]


def _wait_state(client: Client, job_id: str, states, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.request("GET", f"/v1/jobs/{job_id}")
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def test_result_equals_local_segment_voxel_for_voxel(server, case, tmp_path):
    events = []
    outputs = server.client().run("stroke", {"dwi": case["dwi"], "adc": case["adc"]}, {"probabilities": True},
                                  tmp_path / "remote", on_event=events.append)
    local = cli("segment", "--task", "stroke", "-i", f"dwi={case['dwi']}", "-i", f"adc={case['adc']}",
                "-o", tmp_path / "local", "--probabilities", "--progress", "none")
    assert local.returncode == 0, local.stderr
    remote_seg = sitk.ReadImage(outputs["segmentation"])
    local_seg = sitk.ReadImage(str(tmp_path / "local" / "segmentation.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(remote_seg), sitk.GetArrayFromImage(local_seg))
    assert remote_seg.GetOrigin() == local_seg.GetOrigin() and remote_seg.GetDirection() == local_seg.GetDirection()
    assert sitk.GetArrayFromImage(remote_seg).any(), "the crop holds the sample's lesion"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(outputs["probabilities"])),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "local" / "probabilities.nii.gz"))))
    # the same events as `segment --progress jsonl`, ending with exactly one done
    progress = [e["fraction"] for e in events if e["event"] == "progress"]
    assert progress and progress == sorted(progress)
    assert {e["stage"] for e in events if e["event"] == "progress"} >= {"read", "inference", "write"}
    assert [e["event"] for e in events if e["event"] in ("done", "error")] == ["done"]
    report = json.loads(Path(outputs["report"]).read_text())
    assert report["volumes_ml"] == json.loads((tmp_path / "local" / "report.json").read_text())["volumes_ml"]
    # the client deleted the job after unpacking: nothing of it is left on the server
    assert server.job_files() == []


def test_progress_as_server_sent_events(server, case):
    client = server.client()
    job_id = client.submit("stroke", {"dwi": case["dwi"], "adc": case["adc"]}, {})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    try:
        conn.request("GET", f"/v1/jobs/{job_id}/events/stream", headers=_auth())
        response = conn.getresponse()
        assert response.getheader("content-type").startswith("text/event-stream")
        events = [json.loads(line[len(b"data: "):]) for line in response.read().split(b"\n")
                  if line.startswith(b"data: ")]
    finally:
        conn.close()
    assert events == client.events(job_id, 0)[1]   # the stream ends after the final event, like polling
    assert events[-1]["event"] == "done" and events[-1]["outputs"]["segmentation"] == "segmentation.nii.gz"
    client.delete(job_id)


def test_four_clients_at_once_all_complete_with_models_loaded_once_per_worker(server, case, tmp_path):
    results, errors = {}, []

    def one(i):
        try:
            results[i] = server.client(TOKENS[i % 2]).run("stroke", {"dwi": case["dwi"], "adc": case["adc"]}, {},
                                                           tmp_path / f"client{i}")
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    before = server.client().check()["devices"][0]
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    segs = [sitk.GetArrayFromImage(sitk.ReadImage(results[i]["segmentation"])) for i in range(4)]
    assert all(np.array_equal(segs[0], s) for s in segs[1:])
    after = server.client().check()["devices"][0]
    assert after["jobs_done"] - before["jobs_done"] == 4
    # one worker per device, its model loaded by its first job only
    assert after["model_loads"] == after["workers_started"] == 1


def test_wrong_or_missing_token_is_401_and_nothing_is_stored(server, case):
    body = case["dwi"].read_bytes()
    for headers in ({}, _auth("not-the-token-at-all-000"), {"Authorization": TOKENS[0]}):
        status, answer = _raw(server, "POST", "/v1/jobs", b'{"task": "stroke"}',
                              {**headers, "Content-Type": "application/json"})
        assert status == 401 and "token" in answer["error"]
        status, answer = _raw(server, "PUT", "/v1/jobs/x/inputs/dwi", body, headers)
        assert status == 401
    assert server.job_files() == []
    with pytest.raises(UserError, match="refused the token"):
        Client(server.url, "not-the-token-at-all-000").check()
    # a job is visible to its own client only
    job_id = _new_job(server, TOKENS[0])
    status, answer = _raw(server, "GET", f"/v1/jobs/{job_id}", headers=_auth(TOKENS[1]))
    assert status == 404
    server.client().delete(job_id)


def test_upload_over_the_caps_is_413_before_the_body_is_stored(server):
    job_id = _new_job(server)
    # only the headers are sent: the answer comes before any byte of the body
    status, answer = _raw(server, "PUT", f"/v1/jobs/{job_id}/inputs/dwi", headers={
        **_auth(), "Content-Length": str(MAX_UPLOAD + 1)}, send_body=False)
    assert status == 413 and "at most" in answer["error"]
    # a NIfTI header announcing more voxels than the cap: refused from the header, body never stored
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, 200, 200, 200, 1, 1, 1, 1)
    struct.pack_into("<h", header, 70, 16)
    header[344:348] = b"n+1\0"
    status, answer = _raw(server, "PUT", f"/v1/jobs/{job_id}/inputs/dwi", bytes(header) + b"\0" * 4096, _auth())
    assert status == 413 and "8,000,000 voxels" in answer["error"]
    assert [p for p in server.job_files() if "inputs" in p.parts] == []
    server.client().delete(job_id)


def test_truncated_nifti_gets_the_command_lines_error(server, case, tmp_path):
    truncated = tmp_path / "dwi.nii.gz"
    data = case["dwi"].read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    local = cli("segment", "--task", "stroke", "-i", f"dwi={truncated}", "-i", f"adc={case['adc']}", "-o",
                tmp_path / "out")
    assert local.returncode == 2
    cli_error = local.stderr.strip().splitlines()[-1].removeprefix("error: ")
    job_id = _new_job(server)
    status, answer = _raw(server, "PUT", f"/v1/jobs/{job_id}/inputs/dwi", truncated.read_bytes(), _auth())
    assert status == 422
    assert answer["error"] == cli_error.replace(str(truncated), "the upload")
    assert not (server.work / job_id / "inputs" / "dwi.nii.gz").exists()
    server.client().delete(job_id)


def test_file_names_never_become_paths_and_formats_come_from_content(server, case, tmp_path):
    job_id = _new_job(server)
    outside = server.work.parent / "x.nii.gz"
    status, answer = _raw(server, "PUT", f"/v1/jobs/{job_id}/inputs/dwi", case["dwi"].read_bytes(),
                          {**_auth(), "Content-Disposition": 'attachment; filename="../../x.nii.gz"'})
    assert status == 200 and answer["format"] == "nii.gz"
    for name in ("..%2F..%2Fx.nii.gz", "x.nii.gz"):
        status, answer = _raw(server, "PUT", f"/v1/jobs/{job_id}/inputs/{name}", case["dwi"].read_bytes(), _auth())
        assert status in (400, 404), answer
    # the NRRD file sent as the input adc is stored as NRRD whatever the client calls it
    status, answer = _raw(server, "PUT", f"/v1/jobs/{job_id}/inputs/adc", case["adc"].read_bytes(), _auth())
    assert status == 200 and answer["format"] == "nrrd"
    status, answer = _raw(server, "PUT", f"/v1/jobs/{job_id}/inputs/adc", b"just some text, named .nii.gz" * 20,
                          _auth())
    assert status == 415 and "neither NIfTI" in answer["error"]
    files = [p.relative_to(server.work).as_posix() for p in server.job_files()]
    assert files == [f"{job_id}/inputs/adc.nrrd", f"{job_id}/inputs/dwi.nii.gz"]   # the refused upload kept nothing
    assert not outside.exists() and not any(server.work.parent.glob("x*"))
    server.client().delete(job_id)
    assert server.job_files() == []


def test_settings_are_checked_like_the_command_lines(server):
    client = server.client()
    with pytest.raises(UserError) as exc:
        client.request("POST", "/v1/jobs", {"task": "stroke", "settings": {"preset": "ultra"}})
    assert str(exc.value) == "unknown preset 'ultra'; choose one of: fast, balanced, best"
    with pytest.raises(UserError, match="no stroke model '../demo-stroke'"):
        client.request("POST", "/v1/jobs", {"task": "stroke", "settings": {"models": ["../demo-stroke"]}})
    with pytest.raises(UserError, match="cannot be given to this server"):
        client.request("POST", "/v1/jobs", {"task": "stroke", "settings": {"device": "cuda"}})
    with pytest.raises(UserError, match="unknown task"):
        client.request("POST", "/v1/jobs", {"task": "liver", "settings": {}})
    document = Client(server.url).request("GET", "/openapi.json")   # the API describes itself, no token needed
    assert "/v1/jobs/{job_id}/inputs/{name}" in document["paths"]


def _start_full_case(server: Server, case, settings=None) -> str:
    return server.client().submit("stroke", {"dwi": case["full_dwi"], "adc": case["full_adc"]},
                                  {"preset": "best", **(settings or {})})


def test_cancel_mid_run_ends_the_worker_and_the_server_keeps_serving(server, case, tmp_path):
    client = server.client()
    job_id = _start_full_case(server, case)
    job = _wait_state(client, job_id, ("running",))
    pid = job["worker_pid"]
    while not [e for e in client.events(job_id, 0)[1] if e.get("stage") == "inference"]:
        time.sleep(0.1)
    client.cancel(job_id)
    _wait_state(client, job_id, ("cancelled",), timeout=60)
    final = client.events(job_id, 0)[1][-1]
    assert final["event"] == "error" and "SIGTERM" in final["message"]
    assert not Path(f"/proc/{pid}").exists(), "the cancelled job's worker process is gone"
    assert not (server.work / job_id / "output").exists(), "no partial result"
    client.delete(job_id)
    outputs = client.run("stroke", {"dwi": case["dwi"], "adc": case["adc"]}, {}, tmp_path / "after")
    assert Path(outputs["segmentation"]).is_file()


def test_sigkilled_worker_fails_only_its_job(server, case, tmp_path):
    client = server.client()
    killed = _start_full_case(server, case)
    job = _wait_state(client, killed, ("running",))
    queued = client.submit("stroke", {"dwi": case["dwi"], "adc": case["adc"]}, {})
    os.kill(job["worker_pid"], signal.SIGKILL)
    _wait_state(client, killed, ("failed",), timeout=60)
    final = client.events(killed, 0)[1][-1]
    assert final["event"] == "error" and "ended unexpectedly (signal 9)" in final["message"]
    done = _wait_state(client, queued, ("done", "failed"))
    assert done["state"] == "done", client.events(queued, 0)[1][-1]
    assert client.events(queued, 0)[1][-1]["event"] == "done"
    for job_id in (killed, queued):
        client.delete(job_id)


def test_batch_on_the_server(server, case, tmp_path):
    for case_id in ("case-a", "case-b"):
        folder = tmp_path / "cohort" / case_id
        folder.mkdir(parents=True)
        (folder / "dwi.nii.gz").write_bytes(case["dwi"].read_bytes())
        (folder / "adc.nrrd").write_bytes(case["adc"].read_bytes())
    run = cli("batch", tmp_path / "cohort", "-o", tmp_path / "out", "--task", "stroke", "--server", server.url,
              "--progress", "none", env={**os.environ, "LESIONFACTORIZER_SERVER_TOKEN": TOKENS[1]})
    assert run.returncode == 0, run.stderr
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and all(",done," in line for line in summary[1:])
    assert (tmp_path / "out" / "case-b" / "segmentation.nii.gz").is_file()
    refused = cli("batch", tmp_path / "cohort", "-o", tmp_path / "out2", "--task", "stroke", "--server", server.url,
                  env={**os.environ, "LESIONFACTORIZER_SERVER_TOKEN": "wrong-token-0123456789"})
    assert refused.returncode == 2 and "refused the token" in refused.stderr


def test_unreachable_server_and_other_version_messages(server):
    with pytest.raises(UserError, match=r"cannot reach the segmentation server at http://127.0.0.1:\d+ "):
        Client(f"http://127.0.0.1:{_free_port()}", TOKENS[0]).check()
    import LesionFactorizerLib.serve.client as client_module

    real = client_module.__version__
    client_module.__version__ = "0.0.1"   # this computer on another release than the server
    try:
        with pytest.raises(UserError, match="runs LesionFactorizer .* this computer 0.0.1"):
            server.client().check()
    finally:
        client_module.__version__ = real


def test_rate_limit_and_non_loopback_refusal(tmp_path):
    refused = cli("serve", "--host", "0.0.0.0", "--port", str(_free_port()))
    assert refused.returncode == 2 and "--token-file" in refused.stderr.strip().splitlines()[-1]
    s = Server(tmp_path, "--requests-per-minute", "3", tokens=())
    try:
        client = Client(s.url)
        for _ in range(3):
            client.request("GET", "/v1/info")
        with pytest.raises(UserError, match="too many requests"):
            client.request("GET", "/v1/info")
    finally:
        s.stop()


def test_slicer_remote_run_reads_like_a_local_worker(server, case, tmp_path, module_lib_importable):
    """The module's "Process on: Server" run: the same events, result and messages as its local worker."""
    from LesionFactorizerModuleLib.outputs import find_outputs
    from LesionFactorizerModuleLib.progress import ProgressTracker
    from LesionFactorizerModuleLib.remote import RemoteRun
    from LesionFactorizerModuleLib.worker import SegmentRequest, failure_message

    from LesionFactorizerLib.modelfile import find_model

    # the module lists this computer's model files; the server is asked for the model by name
    request = SegmentRequest.of("stroke", {"dwi": case["dwi"], "adc": case["adc"]}, tmp_path / "output",
                                models=str(find_model("demo-stroke")), components=True, overview=False)
    run = RemoteRun(server.url, TOKENS[0], request)
    tracker, kinds = ProgressTracker(), []
    result = run.wait(callback=lambda e: (tracker.update(e), kinds.append(e.kind)))
    assert result.succeeded, failure_message(result)
    assert kinds[-1] == "done" and tracker.percent == 100
    files = find_outputs(tmp_path / "output", result.outputs)   # what the module's result import reads
    assert files.segmentation.is_file() and files.components is not None and files.components.is_dir()
    assert json.loads(files.report.read_text())["models"][0]["name"] == "demo-stroke"

    refused = RemoteRun(server.url, "wrong-token-0123456789", request).wait()
    assert not refused.succeeded and "refused the token" in failure_message(refused)
    unreachable = RemoteRun(f"http://127.0.0.1:{_free_port()}", TOKENS[0], request).wait()
    assert "cannot reach the segmentation server" in failure_message(unreachable)

    full = SegmentRequest.of("stroke", {"dwi": case["full_dwi"], "adc": case["full_adc"]}, tmp_path / "cancelled",
                             preset="best")
    run = RemoteRun(server.url, TOKENS[0], full)
    while not [e for e in run.poll(0.2) if e.stage == "inference"]:
        assert run.running
    run.cancel()
    result = run.wait()
    assert result.cancelled and not result.succeeded and failure_message(result) == "Segmentation cancelled."
    assert not (tmp_path / "cancelled").exists()
    # deleted by the client; the folder goes once the worker has let go of it
    deadline = time.monotonic() + 30
    while server.job_files() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.job_files() == [], "the cancelled job was deleted on the server"


def test_upload_formats_and_sizes_come_from_the_first_bytes(tmp_path):
    """What the server reads before storing an upload, fed in small pieces as a network delivers it."""
    from LesionFactorizerLib.serve.uploads import HeaderReader, TooLarge

    image = sitk.Image([7, 5, 3], sitk.sitkFloat32)
    for name, suffix in (("a.nii", ".nii"), ("a.nii.gz", ".nii.gz"), ("a.nrrd", ".nrrd")):
        sitk.WriteImage(image, str(tmp_path / name))
        data = (tmp_path / name).read_bytes()
        reader = HeaderReader(max_voxels=105)
        for i in range(0, len(data), 10):
            if reader.feed(data[i:i + 10]) is not None:
                break
        assert (reader.finish().suffix, reader.finish().shape) == (suffix, (7, 5, 3))
        with pytest.raises(TooLarge, match="105 voxels"):
            HeaderReader(max_voxels=104).feed(data)
    detached = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 7 5 3\nencoding: raw\ndata file: /etc/passwd\n\n"
    with pytest.raises(UserError, match="detached header"):
        HeaderReader(max_voxels=1000).feed(detached)
