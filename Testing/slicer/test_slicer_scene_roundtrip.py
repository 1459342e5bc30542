"""What a reader saves is what they see, and a saved scene reopens as it was: the module's parameter
node and a segmentation with hidden lesions through an MRML-format write → read (the stand-in's
``slicer.util.saveScene`` / ``loadScene``, which encode node references, attributes and parameters
as vtkMRMLNode / vtkMRMLScriptedModuleNode do), with no save event (Slicer fires none).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import run_in_slicer

pytestmark = [pytest.mark.usefixtures("module_lib_importable"), pytest.mark.slow]


def test_settings_and_inputs_survive_save_close_and_reopen(tmp_path):
    """Every setting changed after entering the module is in the parameter node at once, and the
    input roles survive MRML's reference parsing (a role with ':' would not)."""
    out = run_in_slicer(tmp_path, """
        import numpy as np
        ui = widget.ui
        nodes = {name: slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), name=f"scan {name}")
                 for name in ("dwi", "adc", "flair")}
        ui.taskComboBox.setCurrentIndex(ui.taskComboBox.findData("stroke"))
        for i, name in enumerate(("adc", "dwi", "flair")):  # not what the names would suggest
            widget.inputSelectors[i].setCurrentNode(nodes[name])
        ui.presetComboBox.setCurrentText("fast")
        ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
        ui.ttaCheckBox.checked = True
        ui.nmfIterationsSpinBox.value = 3
        ui.skipNmfListWidget.item(2).setCheckState(qt.Qt.Checked)
        slicer.util.saveScene(str(harness.temporary_path() / "saved"))   # no exit(), no save event
        out["mrml"] = (harness.temporary_path() / "saved" / "saved.mrml").read_text()
        before = widget.logic.getParameterNode()
        slicer.mrmlScene.Clear()                      # File > Close scene
        out["closed"] = widget.inputSelectors[0].currentNode() is None
        after = widget.logic.getParameterNode()       # Slicer's singleton: same node, reset, then the GUI's state
        out["singleton"] = [after is before, after.GetID() == before.GetID(), after.GetParameter("preset")]
        slicer.util.loadScene(str(harness.temporary_path() / "saved" / "saved.mrml"))
        def shown(w):
            r = w.ui
            return {"task": r.taskComboBox.currentData,
                    "inputs": [s.currentNode().GetName() if s.currentNode() else None for s in w.inputSelectors[:3]],
                    "settings": [r.presetComboBox.currentText, r.deviceComboBox.currentData, r.ttaCheckBox.checked,
                                 r.nmfIterationsSpinBox.value],
                    "skip": [r.skipNmfListWidget.item(i).checkState() == qt.Qt.Checked
                             for i in range(r.skipNmfListWidget.count)]}
        out["same widget"] = shown(widget)
        out["new widget"] = shown(harness.create_widget(sys.modules["LesionFactorizer"], "LesionFactorizer"))
        out["parameter nodes"] = len(slicer.mrmlScene.GetNodesByClass("vtkMRMLScriptedModuleNode"))
    """)
    assert 'input_adc:' in out["mrml"] and "input:" not in out["mrml"]
    assert out["closed"] and out["singleton"] == [True, True, "fast"]
    for view in ("same widget", "new widget"):
        assert out[view]["task"] == "stroke", view
        assert out[view]["inputs"] == ["scan adc", "scan dwi", "scan flair"], view
        assert out[view]["settings"] == ["fast", "cpu", True, 3], view
        assert out[view]["skip"] == [i == 2 for i in range(len(out[view]["skip"]))], view
    assert out["parameter nodes"] == 1   # the singleton took the loaded content


def test_saving_after_hiding_lesions_keeps_every_lesion(tmp_path, three_lesion_run):
    """Hide lesions with the confidence slider at its maximum, save, close, reopen: each lesion's
    voxels are in the reopened segmentation (the hidden ones in invisible segments), none lost."""
    labels = sitk.GetArrayFromImage(sitk.ReadImage(three_lesion_run["segmentation"]))
    out = run_in_slicer(tmp_path, _show_result(three_lesion_run, tmp_path) + f"""
        widget.ui.confidenceThresholdSlider.value = 1.0      # every lesion below 1 hidden
        out["hidden rows"] = sum("hidden" in widget.ui.lesionTableWidget.item(r, 2).text()
                                 for r in range(widget.ui.lesionTableWidget.rowCount))
        display = segNode.GetDisplayNode()
        seg = segNode.GetSegmentation()
        out["visible voxels"] = int(sum(slicer.util.arrayFromSegmentBinaryLabelmap(segNode, seg.GetNthSegmentID(i), reference).sum()
                                        for i in range(seg.GetNumberOfSegments())
                                        if display.GetSegmentVisibility(seg.GetNthSegmentID(i))))
        slicer.util.saveScene(str(harness.temporary_path() / "saved"))
        slicer.mrmlScene.Clear()
        slicer.util.loadScene(str(harness.temporary_path() / "saved" / "saved.mrml"))
        reopened = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")[0]
        seg = reopened.GetSegmentation()
        union = None
        out["segments"] = {{}}
        for i in range(seg.GetNumberOfSegments()):
            sid = seg.GetNthSegmentID(i)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(reopened, sid) > 0
            union = mask if union is None else union | mask
            out["segments"][seg.GetSegment(sid).GetName()] = [int(mask.sum()), reopened.GetDisplayNode().GetSegmentVisibility(sid)]
        np.save({str(tmp_path / "union.npy")!r}, union)
        out["threshold"] = reopened.GetAttribute("LesionFactorizer.ConfidenceThreshold")
    """)
    report = json.loads(Path(three_lesion_run["report"]).read_text(encoding="utf-8"))
    below = [lesion for lesion in report["lesions"] if lesion["confidence"] < 1.0]
    assert below and out["hidden rows"] == len(below)
    assert out["visible voxels"] == int((labels > 0).sum()) - sum(lesion["voxels"] for lesion in below)
    union = np.load(tmp_path / "union.npy")
    assert np.array_equal(union, labels > 0), "lesions were lost in the saved scene"
    hidden = {name: v for name, v in out["segments"].items() if "below confidence threshold" in name}
    assert hidden and all(not visible for _, visible in hidden.values())
    assert sum(n for n, _ in hidden.values()) == sum(lesion["voxels"] for lesion in below)
    assert out["threshold"] == "1"


def _show_result(three_lesion_run, tmp_path) -> str:
    """Stand-in code: the run's reference input and segmentation in the scene, shown as a result."""
    return f"""
        import json
        import numpy as np
        m = sys.modules["LesionFactorizer"]
        from LesionFactorizerLib.core.tasks import get_task
        logic = widget.logic
        reference = slicer.util.loadVolume({_reference_input(three_lesion_run)!r})
        task = get_task("stroke")
        segNode = logic.importSegmentation({three_lesion_run["segmentation"]!r}, task, reference)
        result = m.SegmentationResult(task="stroke", succeeded=True, segmentationNode=segNode,
                                      report=json.load(open({three_lesion_run["report"]!r})), referenceVolumeNode=reference,
                                      reportPath={str(tmp_path / "report.json")!r})
        widget.showResults(result)
    """


def test_confidence_slider_rewrites_segments_only_when_a_lesion_changes_side(tmp_path, three_lesion_run):
    """Each segment write adds and removes a "__temp__" label volume in Slicer; dragging the slider
    must write only when a lesion crosses the threshold, and must not set off input auto-assign."""
    out = run_in_slicer(tmp_path, _show_result(three_lesion_run, tmp_path) + """
        import vtk
        slicer.app.processEvents()
        widget.inputSelectors[0].setCurrentNode(None)
        temp = []
        @vtk.calldata_type(vtk.VTK_OBJECT)
        def added(caller, event, node):
            temp.append(node.GetName())
        slicer.mrmlScene.AddObserver(slicer.mrmlScene.NodeAddedEvent, added)
        slider = widget.ui.confidenceThresholdSlider
        steps = [round(i * 0.05, 2) for i in range(21)]
        for value in steps:     # every position of a drag (as with tracking on)
            slider.value = value
        slicer.app.processEvents()
        out["writes"] = temp.count("__temp__")
        out["steps"] = steps
        out["tracking"] = slider.tracking
        out["input after"] = widget.inputSelectors[0].currentNode() is None
    """)
    report = json.loads(Path(three_lesion_run["report"]).read_text(encoding="utf-8"))
    confidences = [lesion["confidence"] for lesion in report["lesions"]]
    hidden = [frozenset(i for i, c in enumerate(confidences) if c < t) for t in out["steps"]]
    changes = sum(a != b for a, b in zip(hidden, hidden[1:]))
    assert 0 < changes < len(out["steps"]) - 1
    assert out["writes"] == 2 * changes   # the label's segment and its hidden segment, per change
    assert out["tracking"] is False       # a real drag emits once, on release
    assert out["input after"] is True     # no auto-assign set off by the temporary nodes


def _reference_input(three_lesion_run) -> str:
    """The dwi input of the navigator fixture's run (report.json names each input's file)."""
    report = json.loads(Path(three_lesion_run["report"]).read_text(encoding="utf-8"))
    return next(entry["path"] for entry in report["inputs"] if entry["name"] == "dwi")
