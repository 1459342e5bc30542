"""The results of a run in the panel: volumes table, summary, and the lesion navigator and component
browser opened on it. Mixed into the module's widget."""

from __future__ import annotations

import qt
from slicer.i18n import tr as _

from LesionFactorizerLib.core.tasks import get_task
from LesionFactorizerModuleLib import components as componentsLib
from LesionFactorizerModuleLib import report as reportLib
from LesionFactorizerModuleLib.jobs import SegmentationResult


class ResultsPanelMixin:
    def _resetResults(self):
        self._result = None
        self.ui.resultsTableWidget.setRowCount(0)
        self.ui.resultsSummaryLabel.text = ""
        self.ui.componentsCollapsibleButton.enabled = False
        self.ui.componentLayerComboBox.clear()
        self.ui.componentScoreLabel.text = ""
        self.ui.counterfactualLabel.text = ""
        self._showLesionTable()

    def showResults(self, result: "SegmentationResult"):
        self._result = result
        task = get_task(result.task)
        rows = reportLib.result_rows(result.report, task.labels, task.regions)
        table = self.ui.resultsTableWidget
        table.setColumnCount(len(reportLib.TABLE_HEADERS))
        table.setHorizontalHeaderLabels(reportLib.TABLE_HEADERS)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row.cells()):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        self.ui.resultsSummaryLabel.text = reportLib.summary_line(result.report, result.task)
        self._startLesionNavigator(result)
        # The browser opens on the component that best explains the lesion; unranked (no lesion),
        # the maps stay hidden until the user chooses a layer.
        best = componentsLib.best_component(result.componentLayers)
        combo = self.ui.componentLayerComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        if result.componentLayers and best is None:  # a placeholder first, so that choosing any layer shows it
            combo.addItem(_("Choose a layer..."), "")
        for name, layer in result.componentLayers.items():
            combo.addItem(f"{layer.title} ({layer.count})", name)
        combo.blockSignals(wasBlocked)
        self._configureComponentSlider()
        self.ui.componentsCollapsibleButton.enabled = bool(result.componentLayers)
        self.ui.counterfactualLabel.text = ""
        self.ui.dropComponentButton.enabled = False
        if best is not None:  # one display, of the best component (the signals would show component 0 first)
            wasBlocked = combo.blockSignals(True)
            combo.setCurrentIndex(combo.findData(best[0]))
            combo.blockSignals(wasBlocked)
            self._configureComponentSlider(best[1])
            self.onComponentDisplayChanged()
        if not result.componentLayers and result.message:
            self.ui.resultsSummaryLabel.text += " " + result.message
