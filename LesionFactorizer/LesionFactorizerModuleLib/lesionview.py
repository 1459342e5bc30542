"""The lesion navigator in Slicer (its decisions are in ``navigator.py``): the logic writes the
navigator's labels back into the segments (hidden lesions into invisible "below confidence
threshold" segments, so the scene and its files always hold them), and the panel shows the
lesion table, next/previous, the threshold slider and reject."""

from __future__ import annotations

import json

import numpy as np
import qt
import slicer
from slicer.i18n import tr as _

from LesionFactorizerLib.core.reportspec import view
from LesionFactorizerLib.core.tasks import get_task
from LesionFactorizerModuleLib import navigator as navigatorLib
from LesionFactorizerModuleLib import results as resultsLib
from LesionFactorizerModuleLib.jobs import SegmentationResult


class LesionNavigationMixin:
    """Mixed into the module's logic."""

    def startLesionNavigator(self, result: SegmentationResult):
        """The navigator over the segmentation as it is now (segments → one label array)."""
        result.navigator = navigatorLib.LesionNavigator(result.report, self._lesionLabels(result))
        return result.navigator

    def _segmentIds(self, result: SegmentationResult) -> dict:
        segmentation = result.segmentationNode.GetSegmentation()
        return {spec.value: segmentation.GetSegmentIdBySegmentName(spec.name)
                for spec in resultsLib.segment_specs(get_task(result.task))}

    def _lesionLabels(self, result: SegmentationResult):
        masks = [(value, slicer.util.arrayFromSegmentBinaryLabelmap(result.segmentationNode, segmentId,
                                                                    result.referenceVolumeNode))
                 for value, segmentId in self._segmentIds(result).items() if segmentId]
        return navigatorLib.labels_from_masks(masks)

    def _updateSegments(self, result: SegmentationResult, values):
        """Copy the navigator's labels of these label values back into their segments, and its
        hidden lesions into each label's hidden "below confidence threshold" segment: the
        segmentation always holds every lesion not rejected, whatever is shown."""
        ids = self._segmentIds(result)
        labels, hidden = result.navigator.labels, result.navigator.hidden_labels()
        specs = {spec.value: spec for spec in resultsLib.segment_specs(get_task(result.task))}
        for value in values:
            if ids.get(value):
                self._writeSegment(result, ids[value], labels == value)
                self._writeHiddenSegment(result, specs[value], hidden == value)

    def _writeSegment(self, result: SegmentationResult, segmentId, mask):
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), result.segmentationNode,
                                                         segmentId, result.referenceVolumeNode)

    def _writeHiddenSegment(self, result: SegmentationResult, spec, mask):
        """The hidden voxels of one label in their own segment, invisible; no segment when none are hidden."""
        segmentation = result.segmentationNode.GetSegmentation()
        name = navigatorLib.hidden_segment_name(spec.name)
        segmentId = segmentation.GetSegmentIdBySegmentName(name)
        if not mask.any():
            if segmentId:
                segmentation.RemoveSegment(segmentId)
            return
        if not segmentId:
            segmentId = segmentation.AddEmptySegment("", name, list(spec.color))
            segmentation.GetSegment(segmentId).SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(),
                                                      spec.terminology)
            result.segmentationNode.GetDisplayNode().SetSegmentVisibility(segmentId, False)
        self._writeSegment(result, segmentId, mask)

    @staticmethod
    def jumpToLesion(lesion):
        """Centre every slice view on the lesion's centroid (RAS)."""
        slicer.modules.markups.logic().JumpSlicesToLocation(*lesion.centroid_ras, True)

    def setLesionConfidenceThreshold(self, result: SegmentationResult, threshold: float):
        """Hide lesions under ``threshold``: they move to hidden segments (kept in the scene and in
        saved files, not deleted); the threshold is recorded on the segmentation node."""
        self._updateSegments(result, result.navigator.set_threshold(threshold))
        result.segmentationNode.SetAttribute(navigatorLib.THRESHOLD_ATTRIBUTE, f"{float(threshold):g}")

    def rejectLesion(self, result: SegmentationResult, lesionId: int, reader=None) -> dict:
        """Remove a lesion's voxels and record the reader's change in report.json and on the node."""
        values, change = result.navigator.reject(lesionId, reader)
        self._updateSegments(result, values)
        navigatorLib.write_report(result.reportPath, result.report)
        result.segmentationNode.SetAttribute("LesionFactorizer.ReaderChanges",
                                             json.dumps(view(result.report).reader_changes))
        return change


class LesionPanelMixin:
    """Mixed into the module's widget."""

    def _navigator(self):
        return self._result.navigator if self._result is not None else None

    def _startLesionNavigator(self, result):
        try:
            self.logic.startLesionNavigator(result)
        except ValueError as exc:  # a report without the lesion table the navigator needs
            result.navigator = None
            self.ui.resultsSummaryLabel.text += " " + _("Lesion navigator unavailable: {error}").format(error=exc)
        slider = self.ui.confidenceThresholdSlider
        wasBlocked = slider.blockSignals(True)
        slider.value = 0.0
        slider.blockSignals(wasBlocked)
        self._showLesionTable()

    def _showLesionTable(self):
        nav = self._navigator()
        table = self.ui.lesionTableWidget
        table.setColumnCount(len(navigatorLib.LESION_HEADERS))
        table.setHorizontalHeaderLabels(navigatorLib.LESION_HEADERS)
        listed = nav.listed() if nav is not None else []
        self._lesionRows = [lesion.id for lesion in listed]
        table.setRowCount(len(listed))
        for r, lesion in enumerate(listed):
            cells = lesion.cells()
            if nav.is_hidden(lesion):
                cells[2] += _(" (hidden)")
            for c, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(lesion.tooltip())
                table.setItem(r, c, item)
        if nav is not None and nav.current in self._lesionRows:
            table.selectRow(self._lesionRows.index(nav.current))
        for button in (self.ui.previousLesionButton, self.ui.nextLesionButton, self.ui.rejectLesionButton):
            button.enabled = bool(listed)
        self.ui.confidenceThresholdSlider.enabled = bool(listed)

    def _goToLesion(self, lesion):
        if lesion is None:
            self.ui.statusLabel.text = _("No lesion is shown at this confidence threshold.")
        else:
            self.logic.jumpToLesion(lesion)
            self.ui.statusLabel.text = _("Lesion {id}: {volume:.2f} mL, {location}.").format(
                id=lesion.id, volume=lesion.volume_ml, location=lesion.location())
        self._showLesionTable()

    def onLesionClicked(self, row, column=0):
        if self._navigator() is None or not 0 <= row < len(self._lesionRows):
            return
        self._goToLesion(self._navigator().select(self._lesionRows[row]))

    def onStepLesion(self, delta):
        if self._navigator() is not None:
            self._goToLesion(self._navigator().step(delta))

    def onConfidenceThresholdChanged(self, value):
        if self._navigator() is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not hide the lesions."), waitCursor=True):
            self.logic.setLesionConfidenceThreshold(self._result, float(value))
        self._showLesionTable()

    def onRejectLesion(self):
        nav = self._navigator()
        if nav is None or nav.current is None:
            self.ui.statusLabel.text = _("Choose a lesion first (click its row or use Next lesion).")
            return
        lesion = nav.by_id(nav.current)
        if not slicer.util.confirmOkCancelDisplay(
                _("Reject lesion {id} ({volume:.2f} mL, {location})? Its voxels are removed from the segmentation "
                  "and report.json records the change.").format(id=lesion.id, volume=lesion.volume_ml,
                                                                location=lesion.location())):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not reject the lesion."), waitCursor=True):
            self.logic.rejectLesion(self._result, lesion.id)
            self.ui.statusLabel.text = _("Lesion {id} rejected; recorded in {path}.").format(
                id=lesion.id, path=self._result.reportPath)
        self._showLesionTable()
