"""The clinician's path through the LesionFactorizer module, played on the Slicer stand-in.

usage: python play_clinician_path.py MODULES_DIR RESULT_JSON --slicer-version V --worker-python P
                                     --worker-site DIR [--crop-mm MM]

MODULES_DIR is the scripted-modules folder of a CMake install tree. Runs in the interpreter
Slicer would embed (3.9 for 5.8, 3.12 for 5.10+); every check is an assertion, the numbers go to
RESULT_JSON. On Python < 3.10 (Slicer 5.8) the module must load, register its samples, and refuse
to segment with a message naming the Slicer version it needs; that is all such a Slicer can do.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

MODULE = "LesionFactorizer"
TASKS_IN_ORDER = ("tumor", "ms-new", "stroke")  # stroke last: its scene is used after the loop


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("modules_dir")
    parser.add_argument("result_json")
    parser.add_argument("--slicer-version", required=True)
    parser.add_argument("--worker-python", required=True)
    parser.add_argument("--worker-site", required=True)
    parser.add_argument("--crop-mm", type=float, default=0.0,
                        help="segment a box of this half-size around the sample lesion (0: whole volumes)")
    args = parser.parse_args()
    started = time.monotonic()
    harness.start(args.modules_dir, args.slicer_version, args.worker_python, args.worker_site)
    import slicer

    module, _ = harness.load_module(args.modules_dir, MODULE)
    # the module imported its packages from the install tree, not from a repository or site-packages
    for name in ("LesionFactorizerLib", "LesionFactorizerModuleLib"):
        assert sys.modules[name].__file__.startswith(str(Path(args.modules_dir).resolve())), sys.modules[name].__file__
    harness.startup_completed()
    import SampleData
    from LesionFactorizerLib.tasks import SLICER_CATEGORY_CONTEXT, get_task
    from LesionFactorizerModuleLib import terminology

    context = harness.loaded_terminology(SLICER_CATEGORY_CONTEXT)
    assert context is not None, "the extension's terminology was not loaded at start-up"
    cases = {task: SampleData.SampleDataLogic.sourceForSampleName(f"{MODULE} {task}") for task in TASKS_IN_ORDER}
    assert all(cases.values()), f"sample cases not registered: {cases}"

    widget = harness.create_widget(module, MODULE)
    widget.enter()
    ui = widget.ui
    result = {"python": sys.version.split()[0], "slicer_version": args.slicer_version, "runs": []}

    if sys.version_info < (3, 10):
        nodes = SampleData.downloadSamples(f"{MODULE} stroke")
        harness.run_events_until(lambda: ui.inputSelector0.currentNode() is not None, 10, "input auto-assignment")
        assert not ui.segmentButton.enabled, "Segment must be disabled where the worker cannot run"
        assert "Slicer 5.10" in ui.statusLabel.text, ui.statusLabel.text
        try:
            widget.logic.segment({"dwi": nodes[0], "adc": nodes[1]}, task="stroke")
            raise AssertionError("Logic.segment ran on an unsupported Python")
        except RuntimeError as exc:
            assert "Slicer 5.10" in str(exc), exc
        result["refused_with"] = ui.statusLabel.text
        result["seconds"] = round(time.monotonic() - started, 1)
        Path(args.result_json).write_text(json.dumps(result, indent=1), encoding="utf-8")
        return

    try:
        play(args, widget, result, started)
    finally:  # as when Slicer exits: the module stops any worker still running
        harness.module_widget(MODULE).cleanup()


def play(args, widget, result, started):
    import SampleData
    import slicer
    from LesionFactorizerLib.tasks import SLICER_CATEGORY_CONTEXT, get_task
    from LesionFactorizerModuleLib import terminology

    ui = widget.ui
    context = harness.loaded_terminology(SLICER_CATEGORY_CONTEXT)
    cases = {task: SampleData.SampleDataLogic.sourceForSampleName(f"{MODULE} {task}") for task in TASKS_IN_ORDER}
    temp = harness.temporary_path()
    segmentations = {}
    for task_name in TASKS_IN_ORDER:
        task = get_task(task_name)
        if slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode"):
            slicer.mrmlScene.Clear()  # File > Close scene before the next patient
            assert not any((temp / "LesionFactorizerComponents").glob("*/*")), "component maps left after closing"
        nodes = SampleData.downloadSamples(f"{MODULE} {task_name}")
        assert len(nodes) == len(cases[task_name].uris), f"{task_name}: sample files not loaded"
        slicer.app.processEvents()  # the module assigns inputs once loading is over
        ui.taskComboBox.setCurrentIndex(ui.taskComboBox.findData(task_name))
        by_input = {node.GetName()[len(task_name) + 1:]: node for node in nodes}
        for i, spec in enumerate(task.inputs):
            assert widget.inputSelectors[i].currentNode() is by_input.get(spec.name), \
                f"{task_name}: {spec.name} was not auto-assigned"
        if args.crop_mm:
            crops = crop_around_lesion(Path(args.modules_dir), task_name, by_input, args.crop_mm)
            for i, spec in enumerate(task.inputs):
                widget.inputSelectors[i].setCurrentNode(crops.get(spec.name))
            by_input = crops
        ui.presetComboBox.setCurrentText("fast")
        ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
        ui.uncertaintyCheckBox.checked = task_name == "ms-new"   # Advanced > Uncertainty map, for one task
        run = click_segment_and_follow(widget, task_name)
        if task_name == "ms-new":
            run["uncertainty"] = check_uncertainty_map(widget)
        seg = widget._result.segmentationNode
        segmentations[task_name] = (seg, by_input)
        run.update(check_segments(widget, task, context, terminology))
        run["lesions"] = navigate_lesions(widget, task, reject=task_name == "stroke")
        assert not list((temp / MODULE).glob("*")), f"{task_name}: the job's temporary folder was left behind"
        run["component_views"] = browse_components(widget)
        run["panel"] = panel_state(widget)
        result["runs"].append(run)

    result["cancel"] = cancel_midway(widget)
    result["rerun"] = rerun_into_same_segmentation(widget, *segmentations["stroke"])
    result["console_loop"] = console_loop(widget, segmentations["stroke"][1])
    result["observe_only_when_entered"] = node_added_only_while_entered(widget)
    # closing the scene releases the component maps kept for the browser
    slicer.mrmlScene.Clear()
    assert not any((temp / "LesionFactorizerComponents").glob("*/*")), "component maps left after closing the scene"
    result["reload"] = reload_module(widget)
    errors = [text for kind, text in harness.dialogs() if kind == "error"]
    assert not errors, errors
    result["seconds"] = round(time.monotonic() - started, 1)
    Path(args.result_json).write_text(json.dumps(result, indent=1), encoding="utf-8")


def crop_around_lesion(modules_dir, task_name, nodes, half_mm):
    """What a user does with Crop Volume before a quick look: a box around the (known) sample lesion."""
    import SimpleITK as sitk
    import slicer

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(modules_dir / "Resources" / "SampleData" / f"{task_name}_label.nii.gz")))
    center = np.round(np.argwhere(label > 0).mean(axis=0)).astype(int)  # (k, j, i)
    crops = {}
    for name, node in nodes.items():
        array = slicer.util.arrayFromVolume(node)
        geometry = harness.volume_geometry(node)
        spacing = np.linalg.norm(geometry[:3, :3], axis=0)[::-1]  # (k, j, i)
        half = np.ceil(half_mm / spacing).astype(int)
        lo = np.maximum(center - half, 0)
        hi = np.minimum(center + half, array.shape)
        shifted = geometry.copy()
        shifted[:3, 3] = (geometry @ np.array([lo[2], lo[1], lo[0], 1.0]))[:3]
        crops[name] = slicer.util.addVolumeFromArray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], ijkToRAS=shifted,
                                                     name=f"{node.GetName()} cropped")
    return crops


def click_segment_and_follow(widget, task_name):
    ui = widget.ui
    assert ui.segmentButton.enabled, f"{task_name}: Segment is disabled: {ui.segmentButton.toolTip}"
    started = time.monotonic()
    ui.segmentButton.click()
    assert ui.segmentButton.text == "Cancel", ui.statusLabel.text
    seen = []

    def idle():
        if ui.progressBar.value not in seen[-1:]:
            seen.append(ui.progressBar.value)
        return ui.segmentButton.text == "Segment"

    harness.run_events_until(idle, 1500, f"{task_name} segmentation")
    assert ui.statusLabel.text.startswith("Done"), f"{task_name}: {ui.statusLabel.text}\n{ui.logTextEdit.toPlainText()}"
    assert seen == sorted(seen) and seen[-1] == 100 and len(seen) >= 3, f"progress went {seen}"
    return {"task": task_name, "seconds": round(time.monotonic() - started, 1), "progress_values": len(seen)}


def check_segments(widget, task, context, terminology):
    import slicer
    import vtk
    from LesionFactorizerModuleLib.results import segment_specs

    result = widget._result
    segmentation = result.segmentationNode.GetSegmentation()
    specs = segment_specs(task)
    assert segmentation.GetNumberOfSegments() == len(specs)
    reference = result.referenceVolumeNode
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    volumes = {}
    for spec, label in zip(specs, task.labels):
        segment_id = segmentation.GetSegmentIdBySegmentName(spec.name)
        assert segment_id, f"no segment named {spec.name}"
        segment = segmentation.GetSegment(segment_id)
        assert np.allclose(segment.GetColor(), spec.color), (segment.GetColor(), spec.color)
        entry = vtk.mutable("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
        assert terminology.resolves(entry.get(), context), f"{spec.name}: {entry.get()} is not in the shipped .term.json"
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentationNode, segment_id, reference)
        volume = float(mask.sum()) * voxel_ml
        reported = float(result.report["volumes_ml"][label.name])
        assert abs(volume - reported) <= max(0.01 * reported, voxel_ml), (label.name, volume, reported)
        volumes[label.name] = round(volume, 3)
    table = widget.ui.resultsTableWidget
    assert table.rowCount >= len(specs), table.rowCount
    return {"volumes_ml": volumes}


def check_uncertainty_map(widget):
    """The voxel-wise uncertainty arrived as a volume on the reference grid, in bits (0..1)."""
    result = widget._result
    node = result.uncertaintyVolumeNode
    assert node is not None and node.GetAttribute("LesionFactorizer.Role") == "uncertainty"
    reference = result.referenceVolumeNode
    assert node._array.shape == reference._array.shape
    assert np.allclose(harness.volume_geometry(node), harness.volume_geometry(reference), atol=1e-4)
    assert 0.0 <= float(node._array.min()) and float(node._array.max()) <= 1.0
    return round(float(node._array.max()), 3)


def _lesion_voxels(widget, task):
    """Voxels of all the task's segments together (the overlay the reader sees)."""
    import slicer

    result = widget._result
    segmentation = result.segmentationNode.GetSegmentation()
    total = 0
    for label in task.labels:
        segment_id = segmentation.GetSegmentIdBySegmentName(label.title)
        total += int(slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentationNode, segment_id,
                                                                result.referenceVolumeNode).sum())
    return total


def navigate_lesions(widget, task, reject):
    """The lesion table: one row per reported lesion; a click centres the slice views on it, next /
    previous walk the list, the confidence slider hides lesions from the overlay and brings them
    back, and (stroke) rejecting one removes its voxels and records the change in report.json."""
    import slicer

    ui = widget.ui
    report = widget._result.report
    table = ui.lesionTableWidget
    lesions = report["lesions"]
    assert table.rowCount == len(lesions) == report["lesion_count"], (table.rowCount, len(lesions))
    assert all("confidence" in lesion and "side" in lesion for lesion in lesions)
    if not lesions:
        assert not ui.nextLesionButton.enabled and not ui.rejectLesionButton.enabled
        return {"count": 0}
    for row, lesion in enumerate(lesions):
        assert table.item(row, 0).text() == str(lesion["id"])
        assert table.item(row, 2).text() == f"{lesion['confidence']:.2f}"
    jumps = harness.slice_jumps()
    last_row = len(lesions) - 1
    table.cellClicked.emit(last_row, 0)
    assert jumps[-1] == (tuple(lesions[last_row]["centroid_ras"]), True), jumps[-1]
    assert table.currentRow() == last_row
    ui.nextLesionButton.click()        # wraps around to the first (largest) lesion
    assert jumps[-1][0] == tuple(lesions[0]["centroid_ras"]) and table.currentRow() == 0
    ui.previousLesionButton.click()
    assert jumps[-1][0] == tuple(lesions[last_row]["centroid_ras"])

    shown = _lesion_voxels(widget, task)
    ui.confidenceThresholdSlider.value = 1.0   # above every lesion's confidence: all leave the overlay
    assert _lesion_voxels(widget, task) == 0
    assert table.rowCount == len(lesions) and "hidden" in table.item(0, 2).text()
    before = len(jumps)
    ui.nextLesionButton.click()
    assert len(jumps) == before and "No lesion" in ui.statusLabel.text
    ui.confidenceThresholdSlider.value = 0.0
    assert _lesion_voxels(widget, task) == shown, "hidden lesions did not come back"
    ui.confidenceThresholdSlider.value = 1.0
    slicer.mrmlScene.Commit()   # File > Save: hiding is a view, the segmentation is saved whole
    assert ui.confidenceThresholdSlider.value == 0.0 and _lesion_voxels(widget, task) == shown
    out = {"count": len(lesions), "jumps": len(jumps), "voxels": shown}
    if reject:
        table.cellClicked.emit(0, 0)
        target = lesions[0]
        ui.rejectLesionButton.click()
        assert _lesion_voxels(widget, task) == shown - target["voxels"]
        assert table.rowCount == len(lesions) - 1
        path = Path(widget._result.reportPath)
        written = json.loads(path.read_text(encoding="utf-8"))
        change = written["reader_changes"][-1]
        assert change["action"] == "reject_lesion" and change["lesion_id"] == target["id"], change
        assert change["voxels_removed"] == target["voxels"]
        attribute = widget._result.segmentationNode.GetAttribute("LesionFactorizer.ReaderChanges")
        assert json.loads(attribute)[-1]["lesion_id"] == target["id"]
        out["rejected"] = target["id"]
    return out


def browse_components(widget):
    """Every layer of the browser, at the first, middle and last component, after the temp folder is gone."""
    ui = widget.ui
    assert ui.componentsCollapsibleButton.enabled and ui.componentLayerComboBox.count > 1
    assert not widget._result.componentVolumeNodes, "maps were read before the user browsed them"
    views = 0
    for index in range(1, ui.componentLayerComboBox.count):  # item 0 is the "Choose a layer" placeholder
        ui.componentLayerComboBox.setCurrentIndex(index)
        layer = widget._currentLayer()
        assert ui.componentSlider.maximum == layer.count - 1
        for position in [0, layer.count - 1, (layer.count - 1) // 2]:  # shown on choosing, then slider moves
            ui.componentSlider.value = position
            shown = harness.slice_layers()["foreground"]
            assert shown is widget._result.componentVolumeNodes[layer.name]
            assert np.array_equal(shown._array, layer.maps[position]), f"{layer.name}[{position}] is not what is shown"
            assert np.allclose(harness.volume_geometry(shown), layer.ijk_to_ras)
            views += 1
    return views


def panel_state(widget):
    """What the module panel shows now, for render_panel.py (the Extension Index picture)."""
    import re

    ui = widget.ui
    table = ui.resultsTableWidget
    return {
        "task": ui.taskComboBox.currentText,
        "inputs": [[label.text, selector.currentNode().GetName()] for label, selector in
                   zip(widget.inputLabels, widget.inputSelectors) if label.isVisible() and selector.currentNode()],
        "model": ui.modelComboBox.currentText,
        "model_card": re.sub(r"<[^>]+>", " ", ui.modelCardLabel.text.replace("</tr>", "\n")).replace("&nbsp;", " "),
        "preset": ui.presetComboBox.currentText,
        "status": ui.statusLabel.text,
        "progress": [ui.progressBar.value, ui.progressBar.format],
        "summary": ui.resultsSummaryLabel.text,
        "table": [[table.item(r, c).text() for c in range(table.columnCount)] for r in range(table.rowCount)],
        "component_layer": ui.componentLayerComboBox.currentText,
        "component": [ui.componentSlider.value, ui.componentSlider.maximum],
    }


def _group_members(pgid):
    members = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(proc.name))
    return members


def cancel_midway(widget):
    ui = widget.ui
    ui.segmentButton.click()
    process = widget._job.process
    harness.run_events_until(lambda: ui.progressBar.value > 0 or not process.running, 300, "the first progress")
    assert process.running, "the run ended before it could be cancelled"
    members = _group_members(process.pid)
    assert len(members) >= 2, f"expected the launcher and its interpreter, found {members}"
    ui.segmentButton.click()
    harness.run_events_until(lambda: ui.segmentButton.text == "Segment", 60, "the cancelled run to end")
    assert ui.progressBar.format == "Cancelled", ui.progressBar.format
    assert ui.segmentButton.enabled
    assert not _group_members(process.pid), f"orphans after cancel: {_group_members(process.pid)}"
    return {"processes_stopped": len(members)}


def rerun_into_same_segmentation(widget, segmentation_node, inputs):
    ui = widget.ui
    for i, spec in enumerate(widget.task.inputs):
        widget.inputSelectors[i].setCurrentNode(inputs.get(spec.name))
    ui.outputSegmentationSelector.setCurrentNode(segmentation_node)
    before = len(harness.dialogs())
    harness.answer_next_confirmations(False)
    ui.segmentButton.click()
    assert len(harness.dialogs()) == before + 1 and segmentation_node.GetName() in harness.dialogs()[-1][1]
    assert widget._job is None and ui.segmentButton.text == "Segment", "declining the confirmation still ran"
    harness.answer_next_confirmations(True)
    run = click_segment_and_follow(widget, "stroke (re-run)")
    assert widget._result.segmentationNode is segmentation_node
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == len(widget.task.labels)
    ui.outputSegmentationSelector.setCurrentNode(None)
    return run


def console_loop(widget, inputs):
    logic = widget.logic
    nodes, seconds = [], []
    for _ in range(2):
        started = time.monotonic()
        result = logic.segment(inputs, task="stroke", preset="fast", device="cpu", components=True,
                               waitForCompletion=True)
        seconds.append(round(time.monotonic() - started, 1))
        assert result.succeeded, result.message
        assert result.componentLayers and next(iter(result.componentLayers.values())).maps.size
        nodes.append(result.segmentationNode)
    assert nodes[0] is not nodes[1]
    return {"seconds": seconds}


def node_added_only_while_entered(widget):
    import slicer

    widget.exit()
    widget.inputSelectors[0].setCurrentNode(None)
    reference = widget.inputSelectors[1].currentNode()
    slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), name="stroke_dwi later", ijkToRAS=np.eye(4))
    slicer.app.processEvents()
    cleared_stays_cleared = widget.inputSelectors[0].currentNode() is None
    assert cleared_stays_cleared, "a volume loaded while the module was not shown refilled a cleared input"
    widget.enter()
    assert widget.inputSelectors[1].currentNode() is reference
    return True


def reload_module(widget):
    before = sys.modules["LesionFactorizerModuleLib.worker"]
    widget.onReload()
    new_widget = harness.module_widget(MODULE)
    assert new_widget is not widget
    assert sys.modules["LesionFactorizerModuleLib.worker"] is not before, "Reload kept the stale helper modules"
    assert new_widget.ui.segmentButton.text == "Segment"
    return True


if __name__ == "__main__":
    main()
