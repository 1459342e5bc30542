"""A run's outputs coming into the scene: the segmentation (one named, coloured, coded segment per
label), probability and uncertainty maps, the component index, the counterfactual difference, and
the files kept for later (report for the reader's changes, maps for the browser). Mixed into the
module's logic."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import slicer

from LesionFactorizerLib.core.reportspec import REPORT_NAME, view
from LesionFactorizerLib.core.tasks import Task
from LesionFactorizerModuleLib import components as componentsLib
from LesionFactorizerModuleLib import navigator as navigatorLib
from LesionFactorizerModuleLib import report as reportLib
from LesionFactorizerModuleLib import results as resultsLib

OUTPUT_ROLE_ATTRIBUTE = "LesionFactorizer.Role"  # marks our output volumes so they are never offered as inputs
from LesionFactorizerModuleLib.jobs import SegmentationResult


class SceneImportMixin:
    """Needs ``keepTemporaryFiles`` and ``_componentFolders`` on the logic."""

    def importResults(self, result: SegmentationResult, files, taskDef: Task, nodes: dict, outputSegmentation):
        """Segmentation with names/colours/terminology, then report, component index and probabilities.

        Component maps are not read here: each layer is read when the browser first shows it.
        """
        reference = nodes[taskDef.reference] if taskDef.reference in nodes else next(iter(nodes.values()))
        result.referenceVolumeNode = reference
        result.report = reportLib.read_report(files.report)
        result.reportPath = str(self._keepReport(files.report))
        result.segmentationNode = self.importSegmentation(files.segmentation, taskDef, reference,
                                                          outputSegmentation)
        self._placeSegmentation(reference, result.segmentationNode)
        if files.components is not None:
            kept = self._keepComponents(files.components, copy=bool(result.savedFolder))
            result.componentLayers = componentsLib.load_components(kept)
            result.caseFolder = str(kept.parent)
        elif view(result.report).components_note:
            result.message = str(view(result.report).components_note)
        if files.probabilities is not None:
            for name, array, ijkToRAS in resultsLib.probability_maps(files.probabilities, result.report):
                node = slicer.util.addVolumeFromArray(array, ijkToRAS=ijkToRAS,
                                                      name=f"{reference.GetName()} probability {name}")
                self._placeInFolder(result, node, "probability")
                result.probabilityVolumeNodes.append(node)
        if files.uncertainty is not None:
            array, ijkToRAS = componentsLib.read_stack(files.uncertainty)
            node = slicer.util.addVolumeFromArray(array[0], ijkToRAS=ijkToRAS,
                                                  name=f"{reference.GetName()} uncertainty")
            self._placeInFolder(result, node, "uncertainty")
            result.uncertaintyVolumeNode = node
        if files.dicom_seg is not None:
            result.dicomSegFile = self.addToDicomDatabase(files.dicom_seg, result.report)
        return result

    def _keepReport(self, path: Path) -> Path:
        """report.json where the reader's changes (rejected lesions) are written back: the output
        folder when temporary files are kept, else a copy that lives until the scene is closed
        (the changes are also kept on the segmentation node, which is saved with the scene)."""
        if self.keepTemporaryFiles:
            return Path(path)
        keep = Path(slicer.util.tempDirectory("LesionFactorizerReports"))
        self._componentFolders.append(keep)
        return Path(shutil.copy2(str(path), str(keep / REPORT_NAME)))

    def _keepComponents(self, folder: Path, copy: bool = False) -> Path:
        """Move the component maps out of the job's temporary folder, which is removed right after
        the import, into a folder that lives until the scene is closed: the browser reads a layer's
        maps only when it is first shown. copy: the maps are in the user's save folder, which is
        theirs to change, so the browser and "Drop this component" work on a copy."""
        if self.keepTemporaryFiles and not copy:
            return folder
        keep = Path(slicer.util.tempDirectory("LesionFactorizerComponents"))
        self._componentFolders.append(keep)
        if copy:
            return Path(shutil.copytree(str(folder), str(keep / folder.name)))
        return Path(shutil.move(str(folder), str(keep / folder.name)))

    def _keepCase(self, result: SegmentationResult, files, inputFiles: dict):
        """"Drop this component" runs the case again (the ``counterfactual`` command): keep the run's
        report, segmentation and input files next to its component maps, until the scene is closed."""
        if not result.caseFolder or not inputFiles:
            return
        keep = Path(result.caseFolder)
        for path in (Path(files.report), Path(files.segmentation)):
            if path.parent != keep:
                shutil.copy2(str(path), str(keep / path.name))
        (keep / "inputs").mkdir(exist_ok=True)
        used = {entry.name for entry in view(result.report).input_files}  # an optional input may be unused
        for name, path in inputFiles.items():
            if name not in used:
                continue
            target = keep / "inputs" / Path(path).name
            (shutil.copy2 if self.keepTemporaryFiles else shutil.move)(str(path), str(target))
            result.caseInputs[name] = str(target)

    def releaseComponentMaps(self):
        """Delete the kept component maps (scene closed or module cleaned up); layers already shown stay."""
        for folder in self._componentFolders:
            shutil.rmtree(folder, ignore_errors=True)
        self._componentFolders = []

    def importSegmentation(self, path, taskDef: Task, reference, outputSegmentation=None):
        """Load a label file into a segmentation node: one named, coloured, coded segment per task label."""
        labelmap = slicer.util.loadLabelVolume(str(path), {"show": False})
        try:
            labels = slicer.util.arrayFromVolume(labelmap)
            segNode = outputSegmentation or slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{reference.GetName()} {taskDef.name} segmentation")
            segNode.CreateDefaultDisplayNodes()
            segNode.SetReferenceImageGeometryParameterFromVolumeNode(reference)
            segmentation = segNode.GetSegmentation()
            for spec in resultsLib.segment_specs(taskDef):
                for name in (spec.name, navigatorLib.hidden_segment_name(spec.name)):
                    existing = segmentation.GetSegmentIdBySegmentName(name)
                    if existing:
                        segmentation.RemoveSegment(existing)
                segmentId = segmentation.AddEmptySegment("", spec.name, list(spec.color))
                # SetTag works in every Slicer release; the SetTerminology shortcut is newer than 5.6.
                segmentation.GetSegment(segmentId).SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(),
                                                          spec.terminology)
                mask = (labels == spec.value).astype(np.uint8)
                if mask.any():
                    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segNode, segmentId, labelmap)
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)
        return segNode

    @staticmethod
    def _placeSegmentation(reference, segNode):
        """Put the segmentation under the reference input's study."""
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        parent = shNode.GetItemParent(shNode.GetItemByDataNode(reference))
        shNode.SetItemParent(shNode.GetItemByDataNode(segNode), parent)

    @staticmethod
    def _placeInFolder(result: SegmentationResult, node, role):
        """Mark an output volume and put it in the "<segmentation> maps" folder, created on first use."""
        node.SetAttribute(OUTPUT_ROLE_ATTRIBUTE, role)
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        if not result.mapsFolderItem:
            segItem = shNode.GetItemByDataNode(result.segmentationNode)
            result.mapsFolderItem = shNode.CreateFolderItem(
                shNode.GetItemParent(segItem), f"{result.segmentationNode.GetName()} maps")
        shNode.SetItemParent(shNode.GetItemByDataNode(node), result.mapsFolderItem)

    def importDifference(self, path, result: SegmentationResult, title: str):
        """The difference labelmap as a segmentation node with one coloured segment per kind of change."""
        labelmap = slicer.util.loadLabelVolume(str(path), {"show": False})
        try:
            values = slicer.util.arrayFromVolume(labelmap)
            segNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                         f"{result.segmentationNode.GetName()} {title}")
            segNode.CreateDefaultDisplayNodes()
            segNode.SetReferenceImageGeometryParameterFromVolumeNode(result.referenceVolumeNode)
            for value, name, color in componentsLib.DIFFERENCE_SEGMENTS:
                segmentId = segNode.GetSegmentation().AddEmptySegment("", name, list(color))
                mask = (values == value).astype(np.uint8)
                if mask.any():
                    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segNode, segmentId, labelmap)
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)
        self._placeInFolder(result, segNode, "counterfactual")
        return segNode
