"""The panel's state in the module's parameter node, written at every change of a widget it
describes and read back when a scene is loaded (names and reference roles in ``state.py``).
Slicer fires no event before it saves a scene, so the node must always hold what is on screen.
Mixed into the module's widget."""

from __future__ import annotations

import qt

from LesionFactorizerLib.core.tasks import TASKS
from LesionFactorizerModuleLib import exports as exportsLib
from LesionFactorizerModuleLib import state as stateLib


class ParameterNodeStateMixin:
    """Needs the widget's ``ui``, ``inputSelectors``, ``logic`` and ``_restoring`` (True while a
    scene closes or loads, when selectors follow nodes leaving and arriving)."""

    def _connectStateSignals(self):
        """Every widget the parameter node describes writes it on each change."""
        ui = self.ui
        save = lambda *args: self._saveState()  # noqa: E731
        for combo in (ui.taskComboBox, ui.modelComboBox, ui.presetComboBox, ui.deviceComboBox,
                      ui.saveFormatComboBox, ui.registerComboBox):
            combo.currentIndexChanged.connect(save)
        for box in (ui.componentsCheckBox, ui.effectsCheckBox, ui.probabilitiesCheckBox, ui.uncertaintyCheckBox,
                    ui.ttaCheckBox, ui.dicomSegCheckBox):
            box.toggled.connect(save)
        ui.nmfIterationsSpinBox.valueChanged.connect(save)
        ui.skipNmfListWidget.itemChanged.connect(save)
        ui.saveFolderPathLineEdit.currentPathChanged.connect(save)
        for selector in (*self.inputSelectors, ui.outputSegmentationSelector):
            selector.currentNodeChanged.connect(save)

    def _pauseState(self, *args):
        self._restoring = True

    def _saveState(self):
        """Task, inputs, output, model and settings into the module's parameter node, which Slicer
        saves with the scene (reference roles in ``stateLib``)."""
        if self._restoring or self.logic is None:
            return
        node = self.logic.getParameterNode()
        inputs = self.selectedInputs()
        skip = [self.ui.skipNmfListWidget.item(i).data(qt.Qt.UserRole) for i in range(self.ui.skipNmfListWidget.count)
                if self.ui.skipNmfListWidget.item(i).checkState() == qt.Qt.Checked]
        values = {"task": self.task.name, "model": self.ui.modelComboBox.currentData or "",
                  "preset": self.ui.presetComboBox.currentText, "device": self.ui.deviceComboBox.currentData,
                  "components": self.ui.componentsCheckBox.checked, "effects": self.ui.effectsCheckBox.checked,
                  "probabilities": self.ui.probabilitiesCheckBox.checked,
                  "uncertainty": self.ui.uncertaintyCheckBox.checked,
                  "tta": self.ui.ttaCheckBox.checked, "nmfIterations": self.ui.nmfIterationsSpinBox.value,
                  "skipNmf": ",".join(skip), "saveFolder": self.ui.saveFolderPathLineEdit.currentPath,
                  "saveFormat": self.ui.saveFormatComboBox.currentData, "dicomSeg": self.ui.dicomSegCheckBox.checked,
                  "register": self.ui.registerComboBox.currentData}
        for name, value in values.items():
            node.SetParameter(name, str(value))
        for name in {spec.name for task in TASKS.values() for spec in task.inputs}:  # other tasks' inputs: none
            inputNode = inputs.get(name)
            node.SetNodeReferenceID(stateLib.input_role(name), inputNode.GetID() if inputNode else None)
        node.SetNodeReferenceID(stateLib.OUTPUT_ROLE, self.ui.outputSegmentationSelector.currentNodeID or None)

    def _restoreState(self, *args):
        """The GUI as the parameter node describes it (a reopened scene), then written back."""
        self._restoring = True
        try:
            self._applyState(self.logic.getParameterNode())
        finally:
            self._restoring = False
        self.updateGuiState()
        self._saveState()

    def _applyState(self, node):
        if node.GetParameter("task") not in TASKS:  # a new scene: the GUI's defaults stand
            return
        combo = self.ui.taskComboBox
        combo.setCurrentIndex(combo.findData(node.GetParameter("task")))
        for i, spec in enumerate(self.task.inputs):
            reference = node.GetNodeReference(stateLib.input_role(spec.name))
            self.inputSelectors[i].setCurrentNodeID(reference.GetID() if reference else "")
        output = node.GetNodeReference(stateLib.OUTPUT_ROLE)
        self.ui.outputSegmentationSelector.setCurrentNodeID(output.GetID() if output else "")
        model = self.ui.modelComboBox.findData(node.GetParameter("model"))
        self.ui.modelComboBox.setCurrentIndex(max(model, 0))
        self.ui.presetComboBox.setCurrentText(node.GetParameter("preset"))
        self.ui.deviceComboBox.setCurrentIndex(max(self.ui.deviceComboBox.findData(node.GetParameter("device")), 0))
        self.ui.registerComboBox.setCurrentIndex(max(self.ui.registerComboBox.findData(node.GetParameter("register")), 0))
        for name in ("components", "effects", "probabilities", "uncertainty", "tta", "dicomSeg"):
            getattr(self.ui, f"{name}CheckBox").checked = node.GetParameter(name) == "True"
        self.ui.saveFolderPathLineEdit.currentPath = node.GetParameter("saveFolder")
        self.ui.saveFormatComboBox.setCurrentIndex(max(self.ui.saveFormatComboBox.findData(
            node.GetParameter("saveFormat") or exportsLib.DEFAULT_SAVE_FORMAT), 0))
        self.ui.nmfIterationsSpinBox.value = int(node.GetParameter("nmfIterations") or 0)
        skip = set(filter(None, node.GetParameter("skipNmf").split(",")))
        for i in range(self.ui.skipNmfListWidget.count):
            item = self.ui.skipNmfListWidget.item(i)
            item.setCheckState(qt.Qt.Checked if item.data(qt.Qt.UserRole) in skip else qt.Qt.Unchecked)
