"""The Slicer module's "Get models…": the catalogue as rows, downloads in a real worker process
from a real HTTP server on localhost (progress, checksum refusal, cancel), delete; then the dialog
itself on the Slicer stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import time

import pytest
from helpers import MODULE_DIR, REPO, STANDIN

from LesionFactorizerLib.catalog import ENV_CATALOG
from LesionFactorizerLib.modelfile import ENV_MODELS
from model_server import STALL_AFTER, serve_test_catalog

pytestmark = pytest.mark.slow


@pytest.fixture()
def served(tmp_path, monkeypatch, module_lib_importable):
    server = serve_test_catalog()
    models = tmp_path / "models"
    monkeypatch.setenv(ENV_MODELS, str(models))
    monkeypatch.delenv(ENV_CATALOG, raising=False)
    yield server.catalog_url, models
    server.close()


def _starter(models):
    from LesionFactorizerModuleLib.worker import WorkerProcess, worker_environment

    env = {**worker_environment(os.environ, REPO), ENV_MODELS: str(models)}
    return lambda args: WorkerProcess(args, env=env)


def _partial(models):
    """The download's hidden temporary file, once the first bytes have arrived."""
    return [p for p in models.glob(".*.tmp") if p.stat().st_size >= STALL_AFTER] if models.exists() else []


def _wait(download, until=None, timeout=120):
    deadline = time.monotonic() + timeout
    percents = []
    while not download.poll():
        percents.append(download.tracker.percent)
        if until is not None and until():
            return percents
        assert time.monotonic() < deadline, "the download did not end"
        time.sleep(0.05)
    return percents + [download.tracker.percent]


def test_rows_say_what_is_installed_and_what_may_be_deleted(served):
    from LesionFactorizerModuleLib.catalog import catalog_rows

    found, rows = catalog_rows()   # the bundled catalogue: every demo is here, none may be deleted
    assert rows and all(r.state == "bundled" and not r.can_download and not r.can_delete for r in rows)
    assert all(r.cells[-1] == "bundled" and "bundled" in r.tooltip for r in rows)
    url, models = served
    found, rows = catalog_rows(url)
    assert found.url == url and {r.state for r in rows} == {""}
    assert all(r.can_download and not r.can_delete for r in rows)


def test_download_in_the_worker_installs_with_progress_then_delete(served):
    from LesionFactorizerModuleLib.catalog import Download, catalog_rows
    from LesionFactorizerLib.catalog import delete

    url, models = served
    download = Download("stroke-good", _starter(models), sys.executable, url)
    percents = _wait(download)
    assert download.result.succeeded, download.result.log
    assert percents == sorted(percents) and percents[-1] == 100 and download.tracker.finished
    assert download.message.startswith("stroke-good: installed") and str(models) in download.message
    row = {r.entry.name: r for r in catalog_rows(url)[1]}["stroke-good"]
    assert row.state == "downloaded" and row.can_delete and not row.can_download
    delete("stroke-good")
    assert sorted(os.listdir(models)) == []


def test_worker_refuses_the_corrupted_file(served):
    from LesionFactorizerModuleLib.catalog import Download

    url, models = served
    download = Download("stroke-corrupted", _starter(models), sys.executable, url)
    _wait(download)
    assert not download.result.succeeded and download.result.returncode == 2
    assert "failed its checksum" in download.message and "\n" not in download.message
    assert sorted(os.listdir(models)) == []


def test_cancel_stops_the_worker_and_leaves_nothing(served):
    from LesionFactorizerModuleLib.catalog import Download

    url, models = served
    download = Download("stroke-stalls", _starter(models), sys.executable, url)
    _wait(download, until=lambda: _partial(models), timeout=60)
    assert _partial(models) and download.result is None
    download.cancel()
    _wait(download, timeout=60)
    assert download.result.cancelled and "cancelled; nothing was installed" in download.message
    assert sorted(os.listdir(models)) == []


def test_get_models_dialog_on_the_slicer_standin(tmp_path):
    """The button opens the dialog; download (the model selector then offers it), a corrupted file's
    refusal, cancel and delete, as a user clicks them."""
    server = serve_test_catalog()
    models = tmp_path / "models"
    script = textwrap.dedent(f"""
        import json, os, sys
        from pathlib import Path
        sys.path.insert(0, {str(STANDIN)!r})
        import harness
        harness.start({str(MODULE_DIR)!r}, "5.10.0", {sys.executable!r}, {sysconfig.get_paths()["purelib"]!r})
        import slicer
        module, _ = harness.load_module({str(MODULE_DIR)!r}, "LesionFactorizer")
        harness.startup_completed()
        widget = harness.create_widget(module, "LesionFactorizer")
        widget.enter()
        widget.ui.taskComboBox.setCurrentIndex(widget.ui.taskComboBox.findData("stroke"))
        models = Path({str(models)!r})
        out = {{}}

        widget.ui.getModelsButton.click()
        dialog = widget.getModelsDialog
        out["visible"] = dialog.dialog.isVisible()
        out["source"] = dialog.sourceLabel.text
        names = [dialog.table.item(r, 0).text() for r in range(dialog.table.rowCount)]
        out["names"] = names

        def select(name):
            dialog.table.selectRow(names.index(name))
            dialog.table.cellClicked.emit(names.index(name), 0)

        def state(name):
            return dialog.table.item(names.index(name), 6).text()

        def download(name):
            select(name)
            dialog.downloadButton.click()
            out.setdefault("cancelEnabledWhileRunning", []).append(dialog.cancelButton.enabled)
            harness.run_events_until(lambda: dialog.download is None, 120, name)
            return dialog.statusLabel.text

        select("stroke-good")
        out["deleteEnabledBefore"] = dialog.deleteButton.enabled
        out["good"] = download("stroke-good")
        out["bar"] = dialog.progressBar.value
        out["goodState"] = state("stroke-good")
        out["offered"] = widget.ui.modelComboBox.findData(str(models / "stroke-good.safetensors")) >= 0
        out["corrupted"] = download("stroke-corrupted")

        select("stroke-stalls")
        dialog.downloadButton.click()
        harness.run_events_until(lambda: [p for p in models.glob(".*.tmp") if p.stat().st_size >= {STALL_AFTER}],
                                 60, "the first bytes")
        dialog.cancelButton.click()
        harness.run_events_until(lambda: dialog.download is None, 60, "the cancelled download")
        out["cancelled"] = dialog.statusLabel.text

        select("stroke-good")
        out["deleteEnabled"] = dialog.deleteButton.enabled
        dialog.deleteButton.click()
        out["afterDelete"] = state("stroke-good")
        out["stillOffered"] = widget.ui.modelComboBox.findData(str(models / "stroke-good.safetensors")) >= 0
        out["files"] = sorted(os.listdir(models))
        out["dialogs"] = harness.dialogs()
        print(json.dumps(out))
    """)
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                              timeout=400, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                                                ENV_MODELS: str(models), ENV_CATALOG: server.catalog_url})
    finally:
        server.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["visible"] and server.catalog_url in out["source"] and "stroke-good" in out["names"]
    assert out["deleteEnabledBefore"] is False and out["cancelEnabledWhileRunning"] == [True, True]
    assert out["good"].startswith("stroke-good: installed") and out["bar"] == 100
    assert out["goodState"] == "downloaded" and out["offered"]
    assert "stroke-corrupted" in out["corrupted"] and "failed its checksum" in out["corrupted"]
    assert "cancelled; nothing was installed" in out["cancelled"]
    assert out["deleteEnabled"] and out["afterDelete"] == "—" and not out["stillOffered"]
    assert out["files"] == []   # no model left, no temporary file
    assert [kind for kind, _ in out["dialogs"]] == ["confirm"]   # delete asked first
