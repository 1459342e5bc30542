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
    parser.add_argument("--server", metavar="URL TOKEN", nargs=2,
                        help="Process on: Server (a running `lesion-factorizer serve`): the three tasks and a "
                             "cancel through it, then stop")
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
    from LesionFactorizerLib.core.tasks import SLICER_CATEGORY_CONTEXT, get_task
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
    from LesionFactorizerLib.core.tasks import SLICER_CATEGORY_CONTEXT, get_task
    from LesionFactorizerModuleLib import terminology

    ui = widget.ui
    context = harness.loaded_terminology(SLICER_CATEGORY_CONTEXT)
    cases = {task: SampleData.SampleDataLogic.sourceForSampleName(f"{MODULE} {task}") for task in TASKS_IN_ORDER}
    temp = harness.temporary_path()
    segmentations = {}
    if args.server:   # Advanced > Process on: Server, its address and token (kept in the application settings)
        ui.processOnComboBox.setCurrentIndex(ui.processOnComboBox.findData("server"))
        ui.serverURLLineEdit.text, ui.serverTokenLineEdit.text = args.server
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
        run["window_nmf"] = widget._result.report["settings"]["window_nmf"]   # what ran the NMF layers
        if task_name == "ms-new":
            run["uncertainty"] = check_uncertainty_map(widget)
        seg = widget._result.segmentationNode
        segmentations[task_name] = (seg, by_input)
        run.update(check_segments(widget, task, context, terminology))
        run["lesions"] = navigate_lesions(widget, task, reject=task_name == "stroke")
        assert not list((temp / MODULE).glob("*")), f"{task_name}: the job's temporary folder was left behind"
        run["opened_on"] = opened_on_best_component(widget)
        run["counterfactual"] = drop_component(widget)
        run["component_views"] = browse_components(widget)
        run["panel"] = panel_state(widget)
        result["runs"].append(run)
        assert ui.registerComboBox.isVisible() == bool(task.register_inputs), f"{task_name}: register option shown?"
        if task_name == "ms-new":
            result["ms_new_misaligned"] = register_misaligned_baseline(widget, by_input)

    if args.server:
        result["cancel"] = cancel_on_server(widget)
        result["seconds"] = round(time.monotonic() - started, 1)
        Path(args.result_json).write_text(json.dumps(result, indent=1), encoding="utf-8")
        return
    result["cancel"] = cancel_midway(widget)
    result["rerun"] = rerun_into_same_segmentation(widget, *segmentations["stroke"])
    result["console_loop"] = console_loop(widget, segmentations["stroke"][1])
    result["save_and_dicom_seg"] = save_to_folder_and_dicom_seg(widget, segmentations["stroke"][1], temp)
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
    # every value the bar is set to, however quickly the run goes (a fast server delivers a whole
    # run's events in one poll; sampling the bar while idle would then see only 0 and 100)
    seen = []
    record = seen.append
    ui.progressBar.valueChanged.connect(record)
    ui.segmentButton.click()
    assert ui.segmentButton.text == "Cancel", ui.statusLabel.text

    def idle():
        return ui.segmentButton.text == "Segment"

    try:
        harness.run_events_until(idle, 1500, f"{task_name} segmentation")
    finally:
        ui.progressBar.valueChanged.disconnect(record)
    assert ui.statusLabel.text.startswith("Done"), f"{task_name}: {ui.statusLabel.text}\n{ui.logTextEdit.toPlainText()}"
    assert seen == sorted(seen) and seen[-1] == 100 and len(seen) >= 3, f"progress went {seen}"
    return {"task": task_name, "seconds": round(time.monotonic() - started, 1), "progress_values": len(seen)}


def register_misaligned_baseline(widget, by_input):
    """A follow-up pair straight from the scanner: the baseline moved by 8° and 7.5 mm (RAS, about
    its centre). With "Register baseline to follow-up" on Automatic the module registers it, and
    the results say so."""
    import slicer

    ui = widget.ui
    baseline = by_input["flair_baseline"]
    ijk_to_ras = harness.volume_geometry(baseline)
    centre = ijk_to_ras @ np.append((np.array(slicer.util.arrayFromVolume(baseline).shape[::-1]) - 1) / 2.0, 1.0)
    axis = np.array([1.0, 0.4, -0.2]) / np.linalg.norm([1.0, 0.4, -0.2])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(8.0)
    motion = np.eye(4)
    motion[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    motion[:3, 3] = centre[:3] - motion[:3, :3] @ centre[:3] + np.array([-5.0, 4.0, 4.0])
    moved = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(baseline).copy(), ijkToRAS=motion @ ijk_to_ras,
                                           name="ms-new_flair_baseline unregistered")
    slicer.app.processEvents()
    widget.inputSelectors[0].setCurrentNode(moved)
    ui.registerComboBox.setCurrentIndex(ui.registerComboBox.findData("auto"))
    run = click_segment_and_follow(widget, "ms-new (unregistered baseline)")
    registration = widget._result.report["registration"]
    assert registration["performed"] and registration["quality"] == "good", registration
    assert abs(registration["transform"]["rotation_deg"] - 8.0) < 1.5, registration["transform"]
    summary = ui.resultsSummaryLabel.text
    assert "Baseline registered to the follow-up" in summary and "quality good" in summary, summary
    run.update(rotation_deg=registration["transform"]["rotation_deg"], quality=registration["quality"],
               displacement_mm=registration["estimate"]["displacement_mm"], summary=summary)
    return run


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


def opened_on_best_component(widget):
    """The browser opens on the component that best explains the lesion (components.json "best"),
    shows it, and says beside the slider how well it explains the lesion."""
    ui = widget.ui
    result = widget._result
    index = json.loads((Path(result.caseFolder) / "components" / "components.json").read_text(encoding="utf-8"))
    best = index["best"]
    assert best is not None, "the sample lesion was segmented, so the components must be ranked"
    assert ui.componentLayerComboBox.currentData == best["layer"], (ui.componentLayerComboBox.currentData, best)
    assert ui.componentSlider.value == best["component"], (ui.componentSlider.value, best)
    layer = widget._currentLayer()
    shown = harness.slice_layers()["foreground"]
    assert shown is result.componentVolumeNodes[best["layer"]]
    assert np.array_equal(shown._array, layer.maps[best["component"]])
    assert list(result.componentVolumeNodes) == [best["layer"]], "layers were read before the user browsed them"
    assert ui.componentScoreLabel.text.startswith("rank 1 of"), ui.componentScoreLabel.text
    assert f"score {best['score']:.2g}" in ui.componentScoreLabel.text, ui.componentScoreLabel.text
    assert ui.dropComponentButton.enabled
    return {"layer": best["layer"], "component": best["component"], "score": best["score"],
            "label": ui.componentScoreLabel.text}


def drop_component(widget):
    """"Drop this component" on the shown component: the worker re-runs the case without it, the
    difference arrives as a segmentation and the volume change is shown; the GUI stays live."""
    import slicer

    ui = widget.ui
    result = widget._result
    layer, component = widget._currentLayer(), int(ui.componentSlider.value)
    before = set(slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode"))
    started = time.monotonic()
    ui.dropComponentButton.click()
    assert not ui.dropComponentButton.enabled, "the button must wait for the running counterfactual"
    assert ui.counterfactualLabel.text.startswith("Segmenting without"), ui.counterfactualLabel.text
    harness.run_events_until(lambda: widget._counterfactualJob is None, 900, "the counterfactual")
    seconds = round(time.monotonic() - started, 1)
    text = ui.counterfactualLabel.text
    assert text.startswith(f"Without {layer.title} #{component}: lesion"), text
    added = [n for n in slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode") if n not in before]
    assert len(added) == 1, added
    segmentation = added[0].GetSegmentation()
    names = [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
             for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["added", "removed", "relabelled"], names
    # the volume change shown is the difference of the two segmentations, voxel for voxel
    reference = result.referenceVolumeNode
    voxel_ml = float(np.prod(reference.GetSpacing())) / 1000.0
    counts = {}
    for name in names:
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        counts[name] = int(slicer.util.arrayFromSegmentBinaryLabelmap(added[0], segment_id, reference).sum())
    assert f"{counts['added']} voxels added" in text and f"{counts['removed']} removed" in text, (text, counts)
    delta = (counts["added"] - counts["removed"]) * voxel_ml
    assert f"({delta:+.2f} mL)" in text or abs(delta) < 0.01, (text, delta)
    assert ui.dropComponentButton.enabled
    return {"seconds": seconds, "layer": layer.name, "component": component, "voxels": counts, "text": text}


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
    # hiding is a view: every lesion stays in the segmentation, in hidden segments
    segmentation = widget._result.segmentationNode
    stored = sum(int(slicer.util.arrayFromSegmentBinaryLabelmap(
        segmentation, segmentation.GetSegmentation().GetNthSegmentID(i), widget._result.referenceVolumeNode).sum())
        for i in range(segmentation.GetSegmentation().GetNumberOfSegments()))
    assert stored == shown, (stored, shown)
    ui.confidenceThresholdSlider.value = 0.0
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
    views = 0
    for index in range(ui.componentLayerComboBox.count):
        if not ui.componentLayerComboBox.itemData(index):
            continue  # the "Choose a layer" placeholder of an unranked result
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


def cancel_on_server(widget):
    """Cancel a server run at once (no wait for progress: a warm server may finish a small case
    between two polls, so waiting would make the test depend on the machine's speed; cancel while
    the server segments is tested in test_serve.py): the GUI is idle again and nothing was imported."""
    ui = widget.ui
    before = slicer_segmentation_count()
    ui.segmentButton.click()
    process = widget._job.process
    assert process.running, "the run ended before it could be cancelled"
    ui.segmentButton.click()
    harness.run_events_until(lambda: ui.segmentButton.text == "Segment", 60, "the cancelled run to end")
    assert ui.progressBar.format == "Cancelled", ui.progressBar.format
    assert slicer_segmentation_count() == before, "a cancelled run imported a result"
    return {"cancelled": True}


def slicer_segmentation_count():
    import slicer

    return len(slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode"))


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


def write_dicom_series(node, folder):
    """What a scanner sends: the volume as an MR series, one file per slice; returns its Series UID."""
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ harness.volume_geometry(node)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    values = node._array.astype(np.float32)
    image = sitk.GetImageFromArray(np.round(values * 1000 / max(float(values.max()), 1e-6)).astype(np.int16))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in direction.ravel()])
    root = "1.2.826.0.1.3680043.8.498.77"
    tags = {"0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0060": "MR", "0010|0010": "Sample^Stroke",
            "0010|0020": "LF-E2E", "0020|000d": root + ".1", "0020|000e": root + ".2", "0020|0052": root + ".3",
            "0008|103e": "stroke_dwi DICOM", "0020|0011": "5",
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))}
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # scanner exports often have no file name ending
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        slice_.SetMetaData("0008|0018", f"{root}.2.{k + 1}")
        slice_.SetMetaData("0020|0013", str(k + 1))
        slice_.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        writer.SetFileName(str(folder / f"IM{k:04d}"))
        writer.Execute(slice_)
    return tags["0020|000e"]


def nrrd_header(path):
    """The text header of a (gzip-encoded) NRRD file: its key:=value and field: value lines."""
    with open(path, "rb") as f:
        head = f.read(1 << 16).split(b"\n\n", 1)[0].decode("utf-8")
    fields = {}
    for line in head.splitlines()[1:]:
        key, sep, value = line.partition(":=") if ":=" in line else line.partition(": ")
        fields[key] = value
    return fields


def save_to_folder_and_dicom_seg(widget, inputs, temp):
    """The DWI comes from PACS through the DICOM module: results saved to a folder as Slicer's
    .seg.nrrd, and a DICOM SEG over the DWI series added to the DICOM database (for PACS)."""
    import SimpleITK as sitk
    import slicer
    from DICOMLib import DICOMUtils
    from LesionFactorizerLib.core.tasks import SLICER_CATEGORY_CONTEXT, get_task
    from LesionFactorizerModuleLib import terminology

    ui = widget.ui
    task = get_task("stroke")
    ui.taskComboBox.setCurrentIndex(ui.taskComboBox.findData("stroke"))
    for i, spec in enumerate(task.inputs):
        widget.inputSelectors[i].setCurrentNode(inputs.get(spec.name))
    assert not ui.dicomSegCheckBox.enabled, "DICOM SEG offered for a volume that did not come from DICOM"
    series_uid = write_dicom_series(inputs["dwi"], temp / "from-scanner")
    DICOMUtils.importDicom(str(temp / "from-scanner"), slicer.dicomDatabase, True)
    (node_id,) = DICOMUtils.loadSeriesByUID([series_uid])
    dwi = slicer.mrmlScene.GetNodeByID(node_id)
    widget.inputSelectors[0].setCurrentNode(dwi)
    assert ui.dicomSegCheckBox.enabled, "DICOM SEG not offered for a volume loaded from DICOM"
    ui.dicomSegCheckBox.click()
    folder = temp / "results" / "stroke case 1"
    ui.saveFolderPathLineEdit.currentPath = str(folder)
    assert ui.saveFormatComboBox.currentData == "seg.nrrd", ui.saveFormatComboBox.currentData
    run = click_segment_and_follow(widget, "stroke (DICOM, saved)")
    result = widget._result
    assert result.referenceVolumeNode is dwi
    run.update(check_segments(widget, task, harness.loaded_terminology(SLICER_CATEGORY_CONTEXT), terminology))
    assert "DICOM SEG added" in ui.statusLabel.text and str(folder) in ui.statusLabel.text, ui.statusLabel.text
    assert not list((temp / MODULE).glob("*")), "the job's temporary folder was left behind"

    # the folder: Slicer's segmentation file with names, colours and terminology, on the DWI grid
    saved = sorted(p.name for p in folder.iterdir())
    for name in ("segmentation.seg.nrrd", "segmentation.dcm", "report.json", "lesions.csv", "components"):
        assert name in saved, saved
    header = nrrd_header(folder / "segmentation.seg.nrrd")
    label = task.labels[0]
    assert header["Segment0_Name"] == label.title and header["Segment0_LabelValue"] == str(label.value)
    assert np.allclose([float(v) for v in header["Segment0_Color"].split()], [c / 255 for c in label.color])
    assert f"TerminologyEntry:{label.terminology_entry()}|" in header["Segment0_Tags"], header["Segment0_Tags"]
    saved_labels = sitk.ReadImage(str(folder / "segmentation.seg.nrrd"))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ harness.volume_geometry(dwi)
    assert np.allclose(saved_labels.GetOrigin(), lps[:3, 3], atol=1e-4)
    assert sitk.GetArrayViewFromImage(saved_labels).shape == dwi._array.shape
    run["component_views"] = browse_components(widget)   # read from the saved folder, which keeps them
    assert (folder / "components" / "components.json").is_file()

    # the DICOM SEG: in the DICOM database, in the DWI's study, referencing its series
    stored = result.dicomSegFile
    assert stored and stored == slicer.dicomDatabase.fileForInstance(result.report["dicom_seg"]["sop_instance_uid"])
    reader = sitk.ImageFileReader()
    reader.SetFileName(stored)
    reader.ReadImageInformation()
    assert reader.GetMetaData("0008|0060").strip() == "SEG"
    assert reader.GetMetaData("0020|000d").strip(" \0") == "1.2.826.0.1.3680043.8.498.77.1"
    assert result.report["dicom_seg"]["referenced_series_instance_uid"] == series_uid
    assert "NOT FOR CLINICAL USE" in reader.GetMetaData("0008|103e")

    # again into the same folder: the user is asked before earlier results are replaced
    before = len(harness.dialogs())
    harness.answer_next_confirmations(False)
    ui.segmentButton.click()
    assert len(harness.dialogs()) == before + 1 and "already holds results" in harness.dialogs()[-1][1]
    assert widget._job is None and ui.segmentButton.text == "Segment"

    ui.saveFolderPathLineEdit.currentPath = ""
    widget.inputSelectors[0].setCurrentNode(inputs["dwi"])
    assert not ui.dicomSegCheckBox.enabled and not ui.dicomSegCheckBox.checked
    run["saved"] = saved
    return run


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
