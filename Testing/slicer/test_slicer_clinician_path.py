"""End to end: the extension built and installed with CMake, run on Slicer's Python versions.

The module runs from the CMake install tree (no repository, no editable install on its path) in
fresh interpreters of the versions Slicer embeds, on the Slicer stand-in (Testing/slicer_standin),
and Testing/slicer_standin/play_clinician_path.py plays what a clinician does:

* Python 3.12 (Slicer 5.10+): loads the three bundled sample cases, picks each task, clicks
  Segment, follows progress, checks segments (names, colours, terminology in the shipped
  .term.json, volumes against the report), browses every component layer at several slider
  positions after the temporary folder is gone, cancels a run midway (no process left, GUI idle),
  re-runs into the same segmentation (confirmation declined, then accepted), segments ms-new with
  a baseline moved by 8° and 7.5 mm (registered by "Register baseline to follow-up: Automatic"), runs
  Logic.segment(waitForCompletion=True) in a loop, closes the scene, reloads the module.
* Python 3.9 (Slicer 5.8): the module loads and registers its samples, and refuses to segment with
  a message naming the Slicer it needs (the worker needs Python 3.10+; CMake refuses Slicer < 5.10).

The worker is started through a stand-in PythonSlicer launcher. Real Slicer runs it in its own
interpreter; here it runs in this test's interpreter (3.11, where torch is installed) with only the
install tree and site-packages on its path, because no torch build for 3.12 is at hand offline.
The GUI interpreters' environments are made once (numpy, SimpleITK, packaging: what Slicer
bundles) under build/slicer-e2e/ and reused. Sample volumes are cropped around the lesion before
segmenting (LESIONFACTORIZER_E2E_CROP_MM, default 36; 0 = whole volumes) to keep CI short.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from slicer_standin import sdk
from helpers import REPO, STANDIN

pytestmark = pytest.mark.slow

ENVS = REPO / "build" / "slicer-e2e"
PLAY = STANDIN / "play_clinician_path.py"
GUI_PACKAGES = ("numpy", "SimpleITK", "packaging")  # what Slicer's Python bundles and the GUI imports
SLICER_FOR_PYTHON = {"3.9": "5.8.1", "3.12": "5.10.0"}


def _interpreter(version: str) -> str | None:
    """pythonX.Y from pyenv or PATH, if it really is that version (a pyenv shim may not be)."""
    candidates = []
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("pyenv") else ""
    if root:
        candidates += sorted(Path(root, "versions").glob(f"{version}.*/bin/python{version}"), reverse=True)
    candidates.append(shutil.which(f"python{version}"))
    for candidate in filter(None, candidates):
        proc = subprocess.run([str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip() == version:
            return str(candidate)
    return None


def _gui_environment(version: str) -> str:
    interpreter = _interpreter(version)
    if interpreter is None:
        pytest.skip(f"Python {version} (the Python of Slicer {SLICER_FOR_PYTHON[version]}) is not installed")
    venv = ENVS / f"py{version}"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import " + ", ".join(GUI_PACKAGES)]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True, capture_output=True)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *GUI_PACKAGES],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return str(python)


@pytest.fixture(scope="module")
def installed_modules(tmp_path_factory):
    work = tmp_path_factory.mktemp("extension")
    proc, build = sdk.configure(work)
    if proc is None:
        pytest.skip("cmake is not installed")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    modules = sdk.install(build, work / "install")
    assert not (modules / "LesionFactorizerLib" / "training").exists()  # the worker must not need it
    return modules


@pytest.mark.parametrize("version", ["3.9", "3.12"])
def test_clinician_path_from_the_install_tree(version, installed_modules, tmp_path):
    python = _gui_environment(version)
    out = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HOME"] = str(tmp_path)  # no user model folder or settings from the machine
    proc = subprocess.run(
        [python, "-I", str(PLAY), str(installed_modules), str(out), "--slicer-version", SLICER_FOR_PYTHON[version],
         "--worker-python", sys.executable, "--worker-site", sysconfig.get_paths()["purelib"],
         "--crop-mm", os.environ.get("LESIONFACTORIZER_E2E_CROP_MM", "36")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800, encoding="utf-8", errors="replace")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["python"].startswith(version + ".")
    ENVS.mkdir(parents=True, exist_ok=True)
    (ENVS / f"last-result-{version}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    if version == "3.9":
        assert "Slicer 5.10" in result["refused_with"]
    else:
        assert [run["task"] for run in result["runs"]] == ["tumor", "ms-new", "stroke"]
        assert all(run["component_views"] >= 3 for run in result["runs"])
        # the worker ran the window-NMF kernel the extension's CMake built (nn/native.py)
        assert all(run["window_nmf"].startswith("native (prebuilt") for run in result["runs"]), result["runs"]
        assert result["ms_new_misaligned"]["quality"] == "good"   # the unregistered baseline was registered


def test_clinician_path_through_the_server(installed_modules, tmp_path):
    """Process on: Server: the three tasks and a cancel, segmented by a `lesion-factorizer serve` on
    localhost (this test's interpreter runs it; the GUI needs only the standard library to reach it)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import socket
    import time as _time

    python = _gui_environment("3.12")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "clinic-laptop-token-0123456789"
    (tmp_path / "tokens").write_text(token + "\n", encoding="utf-8")
    server = subprocess.Popen([sys.executable, "-m", "LesionFactorizerLib", "--threads", "1", "serve", "--port",
                               str(port), "--token-file", str(tmp_path / "tokens"), "--work-dir", str(tmp_path / "jobs")],
                              cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        from LesionFactorizerLib.core.errors import UserError
        from LesionFactorizerLib.serve.client import Client

        deadline = _time.monotonic() + 120
        while True:
            try:
                Client(f"http://127.0.0.1:{port}").request("GET", "/v1/version")
                break
            except UserError:
                assert server.poll() is None and _time.monotonic() < deadline, "the server did not start"
                _time.sleep(0.3)
        out = tmp_path / "result.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["HOME"] = str(tmp_path)
        proc = subprocess.run(
            [python, "-I", str(PLAY), str(installed_modules), str(out), "--slicer-version", SLICER_FOR_PYTHON["3.12"],
             "--worker-python", sys.executable, "--worker-site", sysconfig.get_paths()["purelib"],
             "--crop-mm", os.environ.get("LESIONFACTORIZER_E2E_CROP_MM", "36"),
             "--server", f"http://127.0.0.1:{port}", token],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800, encoding="utf-8", errors="replace")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
        result = json.loads(out.read_text(encoding="utf-8"))
        assert [run["task"] for run in result["runs"]] == ["tumor", "ms-new", "stroke"]
        assert all(run["component_views"] >= 3 for run in result["runs"])
        assert result["cancel"]["cancelled"]
        # the jobs ran on the server, and the client deleted each one after unpacking it
        info = Client(f"http://127.0.0.1:{port}", token).check()
        assert info["devices"][0]["jobs_done"] >= 3
        # (the cancelled job's folder goes once its worker has ended)
        deadline = _time.monotonic() + 30
        while [p for p in (tmp_path / "jobs").rglob("*") if p.is_file()] and _time.monotonic() < deadline:
            _time.sleep(0.2)
        assert not [p for p in (tmp_path / "jobs").rglob("*") if p.is_file()]
    finally:
        server.terminate()
        server.wait(timeout=60)
