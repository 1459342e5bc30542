"""The model catalogue and `models available | download | delete`, against a real HTTP server on
localhost serving a good model, a corrupted one, a truncated one and one that stalls."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from LesionFactorizerLib import catalog
from LesionFactorizerLib.core.checksums import sha256
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.modelfile import ENV_MODELS

from helpers import REPO, main_in_process
from model_server import GOOD, MODELS, STALL_AFTER, corrupted, serve_test_catalog

pytestmark = pytest.mark.slow

SIZE = GOOD.stat().st_size


@pytest.fixture()
def served(tmp_path, monkeypatch):
    server = serve_test_catalog()
    models = tmp_path / "models"
    monkeypatch.setenv(ENV_MODELS, str(models))
    monkeypatch.delenv(catalog.ENV_CATALOG, raising=False)
    yield server, server.catalog_url, models
    server.close()


def _cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "models", *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=120, **kwargs)


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------
# the catalogue document
# ------------------------------------------------------------------------------------------------
def test_published_schema_and_bundled_catalogue_are_the_generated_ones():
    # regenerate both with `python -m LesionFactorizerLib.catalog`
    assert catalog.SCHEMA_PATH.read_text(encoding="utf-8") == catalog.schema_text()
    bundled = (MODELS / catalog.CATALOG_NAME).read_text(encoding="utf-8")
    assert bundled == catalog.catalog_text(catalog.bundled_catalog_document(MODELS))
    schema = catalog.json_schema()
    doc = json.loads(bundled)
    assert set(schema["required"]) <= set(doc) <= set(schema["properties"])
    entry_schema = schema["properties"]["models"]["items"]
    for entry in doc["models"]:
        assert set(entry_schema["required"]) <= set(entry) <= set(entry_schema["properties"])
    parsed = catalog.load_catalog()   # the default: the bundled file
    assert [e.name for e in parsed.models] == sorted(p.stem for p in MODELS.glob("*.safetensors"))
    for entry in parsed.models:
        assert catalog.installed(entry)[0] == "bundled" and entry.status == "demo"
        assert entry.url == (MODELS / f"{entry.name}.safetensors").resolve().as_uri()


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(format="other"), "not a LesionFactorizer model catalogue"),
    (lambda d: d.update(format_version=2), "format version 2 is not supported"),
    (lambda d: d.update(extra=1), "unknown catalogue key"),
    (lambda d: d["models"][0].pop("sha256"), "lacks sha256"),
    (lambda d: d["models"][0].update(sha256="ABC"), "64 lower-case hex"),
    (lambda d: d["models"][0].update(size=0), "size in bytes"),
    (lambda d: d["models"][0].update(status="approved"), "demo, research, clinical"),
    (lambda d: d["models"][0].update(task="liver"), "unknown task"),
    (lambda d: d["models"][0].update(inputs=["flair_followup"]), "required input"),
    (lambda d: d["models"][0].update(name="../evil"), "not a plain file name"),
    (lambda d: d["models"][0].update(url="ftp://host/m.safetensors"), "not an http(s) or file URL"),
    (lambda d: d["models"][0].update(url="file:///etc/hostname"), "a local file, but the catalogue comes from"),
    (lambda d: d["models"][0].update(sample={}), "'sample' must be"),
    (lambda d: d["models"].append(d["models"][0]), "more than once"),
])
def test_malformed_catalogues_are_refused_with_the_reason(change, words):
    doc = json.loads((MODELS / catalog.CATALOG_NAME).read_text(encoding="utf-8"))
    catalog.parse_catalog(doc, "https://example.org/catalog.json")   # valid as it is …
    bad = copy.deepcopy(doc)
    change(bad)
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        catalog.parse_catalog(bad, "https://example.org/catalog.json")


# ------------------------------------------------------------------------------------------------
# downloading (library)
# ------------------------------------------------------------------------------------------------
def test_download_streams_verifies_and_installs(served):
    server, url, models = served
    entry = catalog.load_catalog(url).entry("stroke-good")
    assert entry.url == server.url + "models/stroke.safetensors"   # relative to the catalogue
    seen = []
    path = catalog.download(entry, progress=lambda done, total: seen.append((done, total)))
    assert path == models / "stroke-good.safetensors"
    assert sha256(path) == entry.sha256 and _left_in(models) == [path.name]
    assert seen[0] == (0, entry.size) and seen[-1] == (entry.size, entry.size) and len(seen) > 2
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert catalog.installed(entry) == ("downloaded", path)
    # installed already: nothing is fetched again
    before = len(server.requests)
    assert catalog.download(entry) == path and len(server.requests) == before
    assert catalog.delete("stroke-good") == path and _left_in(models) == []


@pytest.mark.parametrize("name, words", [
    ("stroke-corrupted", "failed its checksum"),
    ("stroke-damaged-weights", "not a usable model file: model file the download failed its checksum"),
    ("stroke-truncated", f"ended after {SIZE // 2 / 1e6:.1f} MB of {SIZE / 1e6:.1f} MB"),
    ("stroke-missing", "HTTP 404"),
    ("stroke-as-tumor", "is a stroke model with inputs dwi, adc, but the catalogue lists task tumor"),
    ("stroke-huge", "not enough disk space"),
    ("stroke-smaller", f"is {SIZE:,} bytes but the catalogue says {SIZE - 1:,}"),
])
def test_a_bad_download_is_refused_and_leaves_nothing(served, name, words):
    server, url, models = served
    entry = catalog.load_catalog(url).entry(name)
    with pytest.raises(UserError, match=words) as info:
        catalog.download(entry)
    assert "\n" not in str(info.value)
    assert _left_in(models) == []   # no model, no temporary file


def test_a_server_that_stops_sending_is_given_up_after_the_timeout(served):
    server, url, models = served
    stopped = f"stopped sending for 1 s after {STALL_AFTER / 1e6:.1f} MB of {SIZE / 1e6:.1f} MB"
    with pytest.raises(UserError, match=stopped):
        catalog.download(catalog.load_catalog(url).entry("stroke-stalls"), timeout=1)
    assert _left_in(models) == []


def test_a_different_file_of_the_same_name_is_replaced_only_when_asked(served):
    server, url, models = served
    good = catalog.load_catalog(url).entry("stroke-good")
    models.mkdir()
    (models / "stroke-good.safetensors").write_bytes(corrupted(GOOD.read_bytes()))
    assert catalog.installed(good)[0] == "other"
    with pytest.raises(UserError, match="different file.*--overwrite"):
        catalog.download(good)
    catalog.download(good, overwrite=True)
    assert sha256(models / "stroke-good.safetensors") == good.sha256 and len(_left_in(models)) == 1


def test_unreachable_server_is_one_line():
    with socket.socket() as s:   # a port on which nobody listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"cannot reach 127.0.0.1:{port} .*refused"):
        catalog.load_catalog(f"http://127.0.0.1:{port}/catalog.json", timeout=5)


def test_bundled_models_cannot_be_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_MODELS, str(tmp_path))
    with pytest.raises(UserError, match="bundled with LesionFactorizer"):
        catalog.delete("demo-stroke")
    assert GOOD.is_file()
    with pytest.raises(UserError, match="no downloaded or imported model named 'nothing'"):
        catalog.delete("nothing")


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def test_cli_download_reports_progress_and_available_shows_it(served):
    server, url, models = served
    env = {ENV_MODELS: str(models), catalog.ENV_CATALOG: url}
    proc = _cli("download", "stroke-good", "--progress", "jsonl", env=env)
    assert proc.returncode == 0, proc.stderr
    events = _events(proc.stdout)
    progress = [e for e in events if e["event"] == "progress"]
    assert {e["stage"] for e in progress} >= {"download", "verify"}
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1]["event"] == "done" and events[-1]["outputs"]["model"] == str(models / "stroke-good.safetensors")
    table = _cli("available", env=env)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[2:]}
    assert rows["stroke-good"].endswith("downloaded") and rows["stroke-missing"].endswith("-")
    listed = json.loads(_cli("available", "--json", "--catalog", url, env={ENV_MODELS: str(models)}).stdout)
    assert {m["name"]: m["installed"] for m in listed["models"]}["stroke-good"] == "downloaded"
    deleted = _cli("delete", "stroke-good", env=env)
    assert deleted.returncode == 0 and _left_in(models) == []


def test_cli_refuses_the_corrupted_file(served):
    server, url, models = served
    proc = main_in_process("models", "download", "stroke-corrupted", "--catalog", url, "--progress", "jsonl",
                           env={**os.environ, ENV_MODELS: str(models)})
    assert proc.returncode == 2
    events = _events(proc.stdout)
    assert events[-1]["event"] == "error" and "failed its checksum" in events[-1]["message"]
    assert proc.stderr.count("error:") == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert _left_in(models) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cancel_mid_download_leaves_nothing(served, sig):
    server, url, models = served
    proc = subprocess.Popen([sys.executable, "-m", "LesionFactorizerLib", "models", "download", "stroke-stalls",
                             "--catalog", url, "--progress", "jsonl", "--timeout", "120"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, ENV_MODELS: str(models)})

    def partial():   # the hidden temporary file, once the first bytes have arrived
        return [p for p in models.glob(".*.tmp") if p.stat().st_size >= STALL_AFTER] if models.exists() else []

    try:
        deadline = time.monotonic() + 60
        while not partial() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert partial(), proc.stderr.read() if proc.poll() is not None else "no download started"
        proc.send_signal(sig)
        rest = proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), proc.stderr.read()
    assert _events(rest)[-1]["event"] == "error"
    assert _left_in(models) == []


def test_catalogue_reading_is_torch_free_and_runs_on_python_39(tmp_path):
    """The Slicer GUI reads catalogues (Slicer 5.8 embeds Python 3.9) and must never load torch."""
    import glob

    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))) or [sys.executable]
    code = ("import sys; from LesionFactorizerLib import catalog; "
            "rows = [catalog.installed(e)[0] for e in catalog.load_catalog().models]; "
            "assert 'torch' not in sys.modules, sorted(sys.modules); print(rows)")
    out = subprocess.run([pythons[-1], "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO), ENV_MODELS: str(tmp_path)}, check=True)
    assert out.stdout.strip() == str(["bundled"] * len(list(MODELS.glob("*.safetensors"))))
