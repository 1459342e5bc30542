"""The module itself (source tree, developer mode) on the Slicer stand-in: start-up and GUI details.

Each test runs a short script in a fresh interpreter, so the stand-in's ``slicer``/``qt``/``vtk``
never enter the test process. The whole clinician's path, with real worker runs from the CMake
install tree, is in test_slicer_clinician_path.py; these are the quick, focused checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import MODULE_DIR, REPO, run_in_slicer


sys.path.insert(0, str(MODULE_DIR))
from LesionFactorizerLib.core.tasks import SLICER_CATEGORY_CONTEXT, TASKS  # noqa: E402
from LesionFactorizerModuleLib import terminology  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("version", ["5.6.2", "5.10.0"])
def test_start_up_registers_samples_and_terminology(tmp_path, version):
    """Slicer 5.6's Sample Data takes loadFileType only; start-up must register the samples anyway."""
    out = run_in_slicer(tmp_path, """
        import SampleData
        out["samples"] = sorted(s.sampleName for s in SampleData.SampleDataLogic._sources.get("LesionFactorizer", []))
        out["terminologies"] = slicer.modules.terminologies.logic().GetLoadedTerminologyNames()
    """, version=version)
    assert out["samples"] == sorted(f"LesionFactorizer {task}" for task in TASKS)
    assert SLICER_CATEGORY_CONTEXT in out["terminologies"]


def test_shipped_terminology_is_current_and_resolves_every_label():
    shipped = MODULE_DIR / "Resources" / "Terminology" / terminology.FILE_NAME
    assert shipped.read_text(encoding="utf-8") == terminology.render(terminology.build_context()), \
        "regenerate it: cd LesionFactorizer && python -m LesionFactorizerModuleLib.terminology " \
        "Resources/Terminology/LesionFactorizer.term.json"
    context = json.loads(shipped.read_text(encoding="utf-8"))
    for task in TASKS.values():
        for label in task.labels:
            assert terminology.resolves(label.terminology_entry(), context), (task.name, label.name)
    # the check can fail: Slicer's DICOM master list context, or a code not in the file
    dicom = label.terminology_entry().replace(SLICER_CATEGORY_CONTEXT, "Segmentation category and type - DICOM master list")
    assert not terminology.resolves(dicom, context)
    assert not terminology.resolves(label.terminology_entry().replace(label.type.value, "123456"), context)


def test_failed_export_is_reported_and_leaves_no_temporary_files(tmp_path):
    out = run_in_slicer(tmp_path, """
        import numpy as np, os
        dwi = slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), name="dwi")
        adc = slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), name="adc")
        dwi._array = None  # a volume without voxels cannot be written
        try:
            widget.logic.segment({"dwi": dwi, "adc": adc}, task="stroke")
        except RuntimeError as exc:
            out["error"] = str(exc)
        out["left"] = [str(p) for p in harness.temporary_path().rglob("*") if p.is_file()]
    """)
    assert "'dwi' could not be written" in out["error"]
    assert out["left"] == []


def test_a_failure_while_showing_results_leaves_the_gui_idle(tmp_path):
    out = run_in_slicer(tmp_path, """
        SegmentationResult = sys.modules["LesionFactorizer"].SegmentationResult
        widget._job = object()  # a run in progress
        widget.updateGuiState()
        out["during"] = widget.ui.segmentButton.text
        def broken(result):
            raise ValueError("report.json is damaged")
        widget.showResults = broken
        widget.onCompleted(SegmentationResult(task="stroke", succeeded=True, report={}))
        out["after"] = widget.ui.segmentButton.text
        out["status"] = widget.ui.statusLabel.text
    """)
    assert out["during"] == "Cancel"
    assert out["after"] == "Segment"
    assert "report.json is damaged" in out["status"]


def test_inputs_are_filled_from_loaded_volumes_only_while_the_module_is_shown(tmp_path):
    out = run_in_slicer(tmp_path, """
        import numpy as np
        widget.ui.taskComboBox.setCurrentIndex(widget.ui.taskComboBox.findData("stroke"))
        def add(name):
            slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), name=name)
            slicer.app.processEvents()
            return widget.inputSelectors[0].currentNode()
        out["shown"] = getattr(add("case1_dwi"), "GetName", lambda: None)()
        widget.inputSelectors[0].setCurrentNode(None)
        widget.exit()
        out["hidden"] = getattr(add("case2_dwi"), "GetName", lambda: None)()
    """)
    assert out["shown"] == "case1_dwi"
    assert out["hidden"] is None


def test_reload_imports_fresh_helper_modules(tmp_path):
    out = run_in_slicer(tmp_path, """
        before = sys.modules["LesionFactorizerModuleLib.worker"]
        widget.onReload()
        out["fresh"] = sys.modules["LesionFactorizerModuleLib.worker"] is not before
        out["new_widget"] = harness.module_widget("LesionFactorizer") is not widget
    """)
    assert out == {"fresh": True, "new_widget": True}


def test_library_is_found_on_python_3_9(tmp_path):
    """Slicer 5.8 runs Python 3.9, where Path.parents cannot be sliced; the module must still load.
    (The whole module on 3.9 is played in test_slicer_clinician_path.py.)"""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(MODULE_DIR)!r})
        from LesionFactorizerModuleLib.libpath import find_library_root
        print(find_library_root({str(MODULE_DIR)!r}))
    """)
    proc = subprocess.run([_python39(), "-I", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(REPO)


def test_unsupported_python_names_the_slicer_it_needs():
    from LesionFactorizerModuleLib.dependencies import MIN_PYTHON, unsupported_python

    message = unsupported_python((3, 9, 18))
    assert "Slicer 5.10 or newer" in message and "Python 3.9" in message
    assert unsupported_python((3, 12, 1)) == ""
    # one minimum: pyproject's requires-python says the same
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'requires-python = ">={MIN_PYTHON[0]}.{MIN_PYTHON[1]}"' in pyproject


def _python39():
    import shutil

    for candidate in [*sorted(Path("/").glob("root/.pyenv/versions/3.9.*/bin/python3.9")), shutil.which("python3.9")]:
        if candidate and subprocess.run([str(candidate), "-c", "import sys; assert sys.version_info[:2] == (3, 9)"],
                                        capture_output=True).returncode == 0:
            return str(candidate)
    pytest.skip("Python 3.9 (Slicer 5.8's Python) is not installed")


def test_model_card_reads_like_a_card():
    """Training data as a sentence, not a dict; expected time from this computer once measured."""
    from LesionFactorizerModuleLib import models

    card = next(c for c in models.list_cards("stroke") if c.source == "bundled")
    assert "{" not in card.training_data and "isles22 layout" in card.training_data
    assert "training steps" in card.training_data and "validation Dice" in card.training_data
    assert card.expected_time() == "shown after the first run on this computer"
    assert card.expected_time(41.6) == "≈ 42 s (last run on this computer)"
    assert "≈ 42 s" in card.html(measuredSeconds=41.6)


def test_inputs_under_a_transform_are_refused_with_what_to_do(tmp_path):
    out = run_in_slicer(tmp_path, """
        import numpy as np
        ui = widget.ui
        ui.taskComboBox.setCurrentIndex(ui.taskComboBox.findData("stroke"))
        nodes = {n: slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), name=f"case {n}") for n in ("dwi", "adc")}
        for i, name in enumerate(("dwi", "adc")):
            widget.inputSelectors[i].setCurrentNode(nodes[name])
        widget.updateGuiState()
        out["before"] = ui.statusLabel.text
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
        nodes["adc"].SetAndObserveTransformNodeID(transform.GetID())
        widget.updateGuiState()
        out["status"], out["enabled"] = ui.statusLabel.text, ui.segmentButton.enabled
        try:
            widget.logic.segment(nodes, task="stroke")
        except ValueError as exc:
            out["error"] = str(exc)
    """)
    assert "transform" not in out["before"]
    assert "'case adc' is under a transform" in out["status"] and "Harden transform" in out["status"]
    assert out["enabled"] is False
    assert out["error"] == out["status"]


def test_import_model_button_adds_a_model_and_refuses_a_broken_file(tmp_path):
    import shutil

    good = tmp_path / "my-stroke.safetensors"
    shutil.copy(REPO / "Resources" / "Models" / "demo-stroke.safetensors", good)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    out = run_in_slicer(tmp_path, f"""
        ui = widget.ui
        ui.taskComboBox.setCurrentIndex(ui.taskComboBox.findData("tumor"))
        harness.answer_next_file_dialogs({str(broken)!r}, {str(good)!r})
        ui.importModelButton.click()
        out["error"] = [text for kind, text in harness.dialogs() if kind == "error"]
        ui.importModelButton.click()
        out["task"] = ui.taskComboBox.currentData
        out["model"] = ui.modelComboBox.currentData
        out["card"] = ui.modelCardLabel.text
        ui.importModelButton.click()   # the dialog cancelled: nothing happens
        out["errors after cancel"] = len([1 for kind, _ in harness.dialogs() if kind == "error"])
    """)
    assert len(out["error"]) == 1 and "Could not import the model" in out["error"][0]
    assert out["task"] == "stroke"   # the imported model's task
    assert out["model"].endswith("my-stroke.safetensors") and Path(out["model"]).is_file()
    assert str(tmp_path) in out["model"] and out["model"] != str(good)   # copied into the user folder
    assert out["card"] and out["errors after cancel"] == 1
    assert not (Path(out["model"]).parent / "broken.safetensors").exists()
