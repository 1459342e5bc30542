"""LesionFactorizer: brain-lesion segmentation with interpretable Factorizer networks in 3D Slicer.

Where things are (the rest of the logic is Slicer-free and lives in LesionFactorizerModuleLib,
where pytest reaches it):
  * LesionFactorizerWidget            the GUI (selectors, Segment/Cancel, progress, results, browser)
  * LesionFactorizerLogic.segment     the Python API, synchronous or asynchronous
  * LesionFactorizerLogic._launch     worker launch (PythonSlicer process; inputs exported in segment)
  * LesionFactorizerLogic.importResults   segmentation, terminology, hierarchy, components, maps
  * LesionFactorizerTest              self-test on the bundled sample data

The GUI process never imports torch: inference runs in `PythonSlicer -m LesionFactorizerLib
segment ...`, which reports progress as JSON lines.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

_MODULE_DIR = Path(__file__).resolve().parent
if str(_MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(_MODULE_DIR))
from LesionFactorizerModuleLib.libpath import bundled_resources, ensure_importable  # noqa: E402

try:
    _LIBRARY_ROOT = ensure_importable(_MODULE_DIR)
except RuntimeError as _exc:  # one clear line in the log instead of a traceback through sys.path code
    logging.error("LesionFactorizer cannot load: %s", _exc)
    raise ImportError(str(_exc)) from None

from LesionFactorizerLib import modelfile  # noqa: E402
from LesionFactorizerLib.errors import UserError  # noqa: E402
from LesionFactorizerLib.pipeline.speed_presets import DEFAULT_SPEED_PRESET, SPEED_PRESETS  # noqa: E402
from LesionFactorizerLib.tasks import TASKS, Task, get_task  # noqa: E402
from LesionFactorizerModuleLib import components as componentsLib  # noqa: E402
from LesionFactorizerModuleLib import dependencies as dependenciesLib  # noqa: E402
from LesionFactorizerModuleLib import exports as exportsLib  # noqa: E402
from LesionFactorizerModuleLib import inputs as inputsLib  # noqa: E402
from LesionFactorizerModuleLib import models as modelsLib  # noqa: E402
from LesionFactorizerModuleLib import navigator as navigatorLib  # noqa: E402
from LesionFactorizerModuleLib import report as reportLib  # noqa: E402
from LesionFactorizerModuleLib import samples as samplesLib  # noqa: E402
from LesionFactorizerModuleLib import terminology as terminologyLib  # noqa: E402
from LesionFactorizerModuleLib import worker as workerLib  # noqa: E402
from LesionFactorizerModuleLib import remote as remoteLib  # noqa: E402
from LesionFactorizerModuleLib import results as resultsLib  # noqa: E402
from LesionFactorizerModuleLib.outputs import find_outputs  # noqa: E402
from LesionFactorizerModuleLib.progress import ProgressTracker, WorkerEvent  # noqa: E402

MAX_INPUTS = 4  # selectors in the .ui; the largest task (tumor) has four inputs
SAMPLE_CATEGORY = "LesionFactorizer"
OUTPUT_ROLE_ATTRIBUTE = "LesionFactorizer.Role"  # marks our output volumes so they are never offered as inputs


#
# Module description
#


class LesionFactorizer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Lesion Factorizer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LesionFactorizer developers"]
        self.parent.helpText = _(
            "Segments brain lesions on multi-parametric MRI — glioma sub-regions (BraTS), ischemic stroke "
            "(ISLES'22) and new multiple-sclerosis lesions (MSSEG-2) — and shows the interpretable NMF "
            "components of Factorizer networks. Inference runs in a separate process; Cancel stops it.<br>"
            "Research software, not for clinical use.")
        self.parent.acknowledgementText = _(
            "Factorizer networks: P. Ashtari, D. M. Sima, L. De Lathauwer, D. Sappey-Marinier, F. Maes and "
            "S. Van Huffel, 'Factorizer: A Scalable Interpretable Approach to Context Modeling for Medical Image "
            "Segmentation', Medical Image Analysis 84:102706, 2023, doi:10.1016/j.media.2022.102706.")
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted():
    registerSampleData()
    loadTerminology()


def registerSampleData():
    """Register the bundled sample cases (one per task) with the Sample Data module.

    Nothing here may stop Slicer's start-up: a damaged manifest or an older Sample Data module is a
    warning in the log, and the module works without samples.
    """
    import SampleData

    try:
        cases = samplesLib.discover_sample_cases(bundled_resources(_LIBRARY_ROOT) / "SampleData")
        for case in cases:
            source = dict(
                category=SAMPLE_CATEGORY,
                sampleName=case.name,
                thumbnailFileName=str(case.thumbnail) if case.thumbnail else None,
                uris=[f.uri for f in case.files],
                fileNames=[f.path.name for f in case.files],
                nodeNames=[case.node_name(f) for f in case.files],
                checksums=[f"SHA256:{f.sha256}" for f in case.files],
            )
            try:
                SampleData.SampleDataLogic.registerCustomSampleDataSource(
                    **source, loadFileTypes=["VolumeFile"] * len(case.files))
            except TypeError:  # Slicer 5.6 and older: one file type for all files
                SampleData.SampleDataLogic.registerCustomSampleDataSource(**source, loadFileType="VolumeFile")
    except Exception as exc:
        logging.warning("LesionFactorizer sample data not registered: %s", exc)


def terminologyFile() -> Path:
    return _MODULE_DIR / "Resources" / "Terminology" / terminologyLib.FILE_NAME


def loadTerminology():
    """Load the extension's terminology context, which the segments' terminology entries name."""
    try:
        if not slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(terminologyFile())):
            raise RuntimeError(f"{terminologyFile()} could not be read")
    except Exception as exc:  # segments keep their names and colours; only the picker lacks the codes
        logging.warning("LesionFactorizer terminology not loaded: %s", exc)


#
# Widget
#


class LesionFactorizerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._job = None
        self._tracker = None
        self._cards: list[modelsLib.ModelCard] = []
        self._result = None  # the run the results table and component browser show
        self._counterfactualJob = None  # a running "drop this component"
        self._updating = False
        self._assignPending = False
        self._lesionRows: list = []  # lesion id per row of the lesion table

    # ---- setup

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LesionFactorizer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LesionFactorizerLogic()

        self.inputLabels = [getattr(self.ui, f"inputLabel{i}") for i in range(MAX_INPUTS)]
        self.inputSelectors = [getattr(self.ui, f"inputSelector{i}") for i in range(MAX_INPUTS)]
        self.inputStatus = [getattr(self.ui, f"inputStatusLabel{i}") for i in range(MAX_INPUTS)]

        for task in TASKS.values():
            self.ui.taskComboBox.addItem(task.title, task.name)
        for preset in SPEED_PRESETS:
            self.ui.presetComboBox.addItem(preset)
        for value, title in workerLib.DEVICE_CHOICES:
            self.ui.deviceComboBox.addItem(title, value)
        for value, title in remoteLib.PROCESS_CHOICES:
            self.ui.processOnComboBox.addItem(title, value)
        for value, title in exportsLib.SAVE_FORMATS:
            self.ui.saveFormatComboBox.addItem(title, value)
        for value, title in workerLib.REGISTER_CHOICES:
            self.ui.registerComboBox.addItem(title, value)
        for layer in workerLib.NMF_LAYERS:
            item = qt.QListWidgetItem(componentsLib.layer_title(layer))
            item.setData(qt.Qt.UserRole, layer)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked)
            self.ui.skipNmfListWidget.addItem(item)
        self._restoreSettings()

        self.ui.taskComboBox.currentIndexChanged.connect(self.onTaskChanged)
        for selector in self.inputSelectors:
            selector.currentNodeChanged.connect(lambda node: self.updateGuiState())
        self.ui.autoAssignButton.clicked.connect(lambda: self.autoAssignInputs(keepCurrent=False))
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.importModelButton.clicked.connect(self.onImportModel)
        self.ui.getModelsButton.clicked.connect(self.onGetModels)
        self.ui.segmentButton.clicked.connect(self.onSegmentButton)
        self.ui.saveFolderPathLineEdit.currentPathChanged.connect(lambda path: self.updateGuiState())
        self.ui.outputSegmentationSelector.currentNodeChanged.connect(
            lambda node: self.ui.show3DButton.setSegmentationNode(node))
        self.ui.componentLayerComboBox.currentIndexChanged.connect(self.onComponentLayerChanged)
        self.ui.componentSlider.valueChanged.connect(self.onComponentDisplayChanged)
        self.ui.componentOpacitySlider.valueChanged.connect(self.onComponentDisplayChanged)
        self.ui.componentColorTableSelector.currentNodeChanged.connect(lambda node: self.onComponentDisplayChanged())
        self.ui.dropComponentButton.clicked.connect(self.onDropComponent)
        self.ui.lesionTableWidget.cellClicked.connect(self.onLesionClicked)
        self.ui.previousLesionButton.clicked.connect(lambda: self.onStepLesion(-1))
        self.ui.nextLesionButton.clicked.connect(lambda: self.onStepLesion(+1))
        self.ui.rejectLesionButton.clicked.connect(self.onRejectLesion)
        self.ui.confidenceThresholdSlider.valueChanged.connect(self.onConfidenceThresholdChanged)

        inferno = slicer.mrmlScene.GetFirstNodeByName("Inferno")  # perceptually uniform, reads well over grey
        if inferno is not None:
            self.ui.componentColorTableSelector.setCurrentNode(inferno)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneClosed)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartSaveEvent, self._onSceneSaving)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self._restoreState)
        self.onTaskChanged()
        self._resetResults()
        self._restoreState()

    def enter(self):
        # Volumes loaded while the module is shown fill empty input selectors; while the user is
        # elsewhere nothing is watched, so inputs they cleared are not refilled behind their back.
        if not self.hasObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded):
            self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.autoAssignInputs(keepCurrent=True)

    def exit(self):
        self.removeObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self._saveState()

    # ---- state saved with the scene

    def _saveState(self, *args):
        """Task, inputs, output, model and settings into the module's parameter node, which Slicer
        saves with the scene. Called when the scene is saved, when the module is left and on Segment."""
        node = self.logic.getParameterNode()
        inputs = self.selectedInputs()
        skip = [self.ui.skipNmfListWidget.item(i).data(qt.Qt.UserRole) for i in range(self.ui.skipNmfListWidget.count)
                if self.ui.skipNmfListWidget.item(i).checkState() == qt.Qt.Checked]
        values = {"task": self.task.name, "model": self.ui.modelComboBox.currentData or "",
                  "preset": self.ui.presetComboBox.currentText, "device": self.ui.deviceComboBox.currentData,
                  "components": self.ui.componentsCheckBox.checked, "probabilities": self.ui.probabilitiesCheckBox.checked,
                  "uncertainty": self.ui.uncertaintyCheckBox.checked,
                  "tta": self.ui.ttaCheckBox.checked, "nmfIterations": self.ui.nmfIterationsSpinBox.value,
                  "skipNmf": ",".join(skip), "saveFolder": self.ui.saveFolderPathLineEdit.currentPath,
                  "saveFormat": self.ui.saveFormatComboBox.currentData, "dicomSeg": self.ui.dicomSegCheckBox.checked,
                  "register": self.ui.registerComboBox.currentData}
        for name, value in values.items():
            node.SetParameter(name, str(value))
        for name, inputNode in inputs.items():
            node.SetNodeReferenceID(f"input:{name}", inputNode.GetID() if inputNode else None)
        node.SetNodeReferenceID("outputSegmentation", self.ui.outputSegmentationSelector.currentNodeID or None)

    def _onSceneSaving(self, *args):
        # Hiding low-confidence lesions is a view, not an edit: save the segmentation whole.
        self.ui.confidenceThresholdSlider.value = 0.0
        self._saveState()

    def _restoreState(self, *args):
        """The GUI as the parameter node describes it (a reopened scene); nothing if it is new."""
        node = self.logic.getParameterNode()
        if node.GetParameter("task") not in TASKS:
            return
        combo = self.ui.taskComboBox
        combo.setCurrentIndex(combo.findData(node.GetParameter("task")))
        for i, spec in enumerate(self.task.inputs):
            reference = node.GetNodeReference(f"input:{spec.name}")
            self.inputSelectors[i].setCurrentNodeID(reference.GetID() if reference else "")
        output = node.GetNodeReference("outputSegmentation")
        self.ui.outputSegmentationSelector.setCurrentNodeID(output.GetID() if output else "")
        model = self.ui.modelComboBox.findData(node.GetParameter("model"))
        self.ui.modelComboBox.setCurrentIndex(max(model, 0))
        self.ui.presetComboBox.setCurrentText(node.GetParameter("preset"))
        self.ui.deviceComboBox.setCurrentIndex(max(self.ui.deviceComboBox.findData(node.GetParameter("device")), 0))
        self.ui.registerComboBox.setCurrentIndex(max(self.ui.registerComboBox.findData(node.GetParameter("register")), 0))
        for name in ("components", "probabilities", "uncertainty", "tta", "dicomSeg"):
            getattr(self.ui, f"{name}CheckBox").checked = node.GetParameter(name) == "True"
        self.ui.saveFolderPathLineEdit.currentPath = node.GetParameter("saveFolder")
        self.ui.saveFormatComboBox.setCurrentIndex(max(self.ui.saveFormatComboBox.findData(
            node.GetParameter("saveFormat") or exportsLib.DEFAULT_SAVE_FORMAT), 0))
        self.ui.nmfIterationsSpinBox.value = int(node.GetParameter("nmfIterations") or 0)
        skip = set(filter(None, node.GetParameter("skipNmf").split(",")))
        for i in range(self.ui.skipNmfListWidget.count):
            item = self.ui.skipNmfListWidget.item(i)
            item.setCheckState(qt.Qt.Checked if item.data(qt.Qt.UserRole) in skip else qt.Qt.Unchecked)
        self.updateGuiState()

    def cleanup(self):
        self.removeObservers()
        self._job = None
        if self.logic is not None:
            self.logic.abortAll()  # stops timers, SIGTERMs the workers without waiting, removes temp dirs
            self.logic.releaseComponentMaps()

    def onReload(self):
        # Slicer's Reload re-reads this file only: drop the helper packages so that it imports
        # fresh copies instead of running the edited module against stale helpers.
        for name in list(sys.modules):
            if name.split(".")[0] in ("LesionFactorizerModuleLib", "LesionFactorizerLib"):
                del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    # ---- settings

    def _restoreSettings(self):
        settings = qt.QSettings()
        self.ui.presetComboBox.setCurrentText(settings.value("LesionFactorizer/preset", DEFAULT_SPEED_PRESET))
        index = self.ui.deviceComboBox.findData(settings.value("LesionFactorizer/device", "auto"))
        self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
        # the server and its token: application settings, never the scene (remoteLib.SETTINGS)
        self.ui.processOnComboBox.setCurrentIndex(max(self.ui.processOnComboBox.findData(
            settings.value(remoteLib.SETTINGS["process_on"], "local")), 0))
        self.ui.serverURLLineEdit.text = settings.value(remoteLib.SETTINGS["url"], "")
        self.ui.serverTokenLineEdit.text = settings.value(remoteLib.SETTINGS["token"], "")

    def _saveSettings(self):
        settings = qt.QSettings()
        settings.setValue(remoteLib.SETTINGS["process_on"], self.ui.processOnComboBox.currentData)
        settings.setValue(remoteLib.SETTINGS["url"], self.ui.serverURLLineEdit.text)
        settings.setValue(remoteLib.SETTINGS["token"], self.ui.serverTokenLineEdit.text)
        settings.setValue("LesionFactorizer/preset", self.ui.presetComboBox.currentText)
        settings.setValue("LesionFactorizer/device", self.ui.deviceComboBox.currentData)

    # ---- task, inputs and model

    @property
    def task(self) -> Task:
        return get_task(self.ui.taskComboBox.currentData)

    def onTaskChanged(self, *args):
        task = self.task
        for i in range(MAX_INPUTS):
            visible = i < len(task.inputs)
            for widget in (self.inputLabels[i], self.inputSelectors[i], self.inputStatus[i]):
                widget.setVisible(visible)
            if visible:
                self.inputSelectors[i].toolTip = task.inputs[i].hint
        # only a task with inputs from another session (ms-new's baseline) has something to register
        for widget in (self.ui.registerLabel, self.ui.registerComboBox):
            widget.setVisible(bool(task.register_inputs))
        # selector i means another input in the new task, so choose again from the names
        self.autoAssignInputs(keepCurrent=False)
        self.refreshModels()
        self.updateGuiState()

    def autoAssignInputs(self, keepCurrent=True):
        """Fill the input selectors from volume names (task name patterns); keep the user's choices."""
        task = self.task
        # plain scalar volumes only: label maps, DTI/vector volumes etc. are subclasses and not MRI inputs
        volumes = {n.GetID(): n.GetName() for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if n.GetClassName() == "vtkMRMLScalarVolumeNode" and not n.GetAttribute(OUTPUT_ROLE_ATTRIBUTE)}
        current = {spec.name: self.inputSelectors[i].currentNodeID or None for i, spec in enumerate(task.inputs)}
        assignment = inputsLib.assign_inputs(task, volumes, keep=current if keepCurrent else None)
        self._updating = True
        try:
            for i, spec in enumerate(task.inputs):
                self.inputSelectors[i].setCurrentNodeID(assignment[spec.name] or "")
        finally:
            self._updating = False
        self.updateGuiState()

    def onNodeAdded(self, caller, event):
        # Nodes arrive one by one while loading: assign once, when the event loop is idle again.
        if not self._assignPending:
            self._assignPending = True
            qt.QTimer.singleShot(0, self._assignAfterLoading)

    def _assignAfterLoading(self):
        self._assignPending = False
        self._lesionRows: list = []  # lesion id per row of the lesion table
        if self._job is None:
            self.autoAssignInputs(keepCurrent=True)

    def onSceneClosed(self, caller, event):
        self._resetResults()
        self.logic.releaseComponentMaps()
        self.updateGuiState()

    def selectedInputs(self) -> dict:
        task = self.task
        return {spec.name: self.inputSelectors[i].currentNode() for i, spec in enumerate(task.inputs)}

    def refreshModels(self):
        errors: list[str] = []
        self._cards = self.logic.availableModels(self.task.name, errors=errors)
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem(_("Default model of the task"), "")
        for card in self._cards:
            self.ui.modelComboBox.addItem(f"{card.title} [{card.source}]", str(card.path))
        if errors:
            self.appendLog(_("Some model files could not be read:") + "\n  " + "\n  ".join(errors))
        self.onModelChanged()

    def onModelChanged(self, *args):
        path = self.ui.modelComboBox.currentData
        if path:
            card = next((c for c in self._cards if str(c.path) == path), None)
        else:  # the worker's own choice, by the library's rule
            card = self.logic.defaultModelCard(self.task.name, self._cards)
        if card is None:
            self.ui.modelCardLabel.text = _("No model is installed for this task: use 'Import model…' to add "
                                            "a .safetensors model file.")
        else:
            self.ui.modelCardLabel.text = card.html(measuredSeconds=self._measuredSeconds(card))
        # only Factorizer networks have NMF components to show
        self.ui.componentsCheckBox.enabled = card is None or card.has_components
        self.updateGuiState()

    @staticmethod
    def _measuredSeconds(card):
        value = qt.QSettings().value(f"LesionFactorizer/lastRunSeconds/{card.name}")
        return float(value) if value not in (None, "") else None

    def _rememberRunTime(self, result):
        """The model card's expected time is the last run's time on this computer (models carry none)."""
        model = result.report.get("model") or {}
        total = (result.report.get("timings_s") or {}).get("total")
        if model.get("name") and isinstance(total, (int, float)):
            qt.QSettings().setValue(f"LesionFactorizer/lastRunSeconds/{model['name']}", float(total))

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import model"), "",
                                              _("Model files (*.safetensors)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the model."), waitCursor=True):
            card = self.logic.importModel(path)
            if card.task != self.task.name and card.task in TASKS:
                self.ui.taskComboBox.setCurrentIndex(self.ui.taskComboBox.findData(card.task))
            self.refreshModels()
            self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(str(card.path)))

    def onGetModels(self):
        from LesionFactorizerModuleLib.catalog_dialog import GetModelsDialog

        if getattr(self, "getModelsDialog", None) is None:   # one dialog: a running download keeps its window
            self.getModelsDialog = GetModelsDialog(self.logic.workerPython, self.logic._start, self.refreshModels,
                                                   self.parent)
        self.getModelsDialog.show()

    def updateGuiState(self):
        """Input marks, status text and the Segment button, from the current selections."""
        if self._updating:
            return
        task = self.task
        assignment = {name: (node.GetID() if node else None) for name, node in self.selectedInputs().items()}
        problems = inputsLib.input_problems(task, assignment)
        for i, spec in enumerate(task.inputs):
            problem = problems.get(spec.name)
            self.inputLabels[i].text = spec.title + (_(" (optional)") if spec.optional else "") + ":"
            self.inputStatus[i].text = ("⚠ " + problem) if problem else ""
            self.inputStatus[i].setStyleSheet("color: #c03030;" if problem else "")
        running = self._job is not None
        noModel = not self._cards
        reason = dependenciesLib.unsupported_python() or inputsLib.problems_summary(task, problems) or (
            _("No model is installed for this task: use 'Import model…'.") if noModel else "") or \
            exportsLib.save_folder_problem(self.ui.saveFolderPathLineEdit.currentPath)
        self._updateDicomSegOption()
        self.ui.segmentButton.text = _("Cancel") if running else _("Segment")
        self.ui.segmentButton.enabled = running or not reason
        self.ui.segmentButton.toolTip = "" if running else reason
        if not running:
            self.ui.statusLabel.text = reason or _("Ready.")

    def _updateDicomSegOption(self):
        """DICOM SEG is offered only when the reference input was loaded from a DICOM series."""
        task = self.task
        node = self.selectedInputs().get(task.reference)
        fromDicom = bool(node and exportsLib.instance_uids(node.GetAttribute(exportsLib.DICOM_UIDS_ATTRIBUTE)))
        self.ui.dicomSegCheckBox.enabled = fromDicom
        if not fromDicom:
            self.ui.dicomSegCheckBox.checked = False

    # ---- running

    def onSegmentButton(self):
        if self._job is not None:
            self.ui.statusLabel.text = _("Cancelling...")
            self._job.cancel()  # returns at once; completedCallback arrives when the tree is gone
            return
        saveFolder = self.ui.saveFolderPathLineEdit.currentPath or None
        saveFormat = self.ui.saveFormatComboBox.currentData if saveFolder else "nrrd"
        dicomSeg = self.ui.dicomSegCheckBox.enabled and self.ui.dicomSegCheckBox.checked
        onServer = self.ui.processOnComboBox.currentData == "server"
        self.logic.server = (self.ui.serverURLLineEdit.text, self.ui.serverTokenLineEdit.text) if onServer else None
        if not onServer and not self.logic.setupPythonRequirements(askConfirmation=True, outputFormat=saveFormat, dicomSeg=dicomSeg):
            return
        saveOverwrite = exportsLib.holds_results(saveFolder)
        if saveOverwrite and not slicer.util.confirmOkCancelDisplay(
                _("'{folder}' already holds results of a run. Replace them?").format(folder=saveFolder)):
            return
        output = self.ui.outputSegmentationSelector.currentNode()
        overwrite = False
        if output is not None and output.GetSegmentation().GetNumberOfSegments() > 0:
            if not slicer.util.confirmOkCancelDisplay(
                    _("'{name}' already has segments. Segments with the task's names will be replaced; "
                      "others are kept. Continue?").format(name=output.GetName())):
                return
            overwrite = True
        self._saveSettings()
        self._saveState()
        self._resetResults()
        self._tracker = ProgressTracker()
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setFormat(_("Starting..."))
        self.ui.logTextEdit.clear()
        skip = [self.ui.skipNmfListWidget.item(i).data(qt.Qt.UserRole)
                for i in range(self.ui.skipNmfListWidget.count)
                if self.ui.skipNmfListWidget.item(i).checkState() == qt.Qt.Checked]
        try:
            self._job = self.logic.segment(
                inputs={k: v for k, v in self.selectedInputs().items() if v is not None},
                task=self.task.name, outputSegmentation=output, overwrite=overwrite, waitForCompletion=False,
                models=self.ui.modelComboBox.currentData or None, preset=self.ui.presetComboBox.currentText,
                device=self.ui.deviceComboBox.currentData, components=self.ui.componentsCheckBox.checked,
                probabilities=self.ui.probabilitiesCheckBox.checked,
                tta=self.ui.ttaCheckBox.checked or None,   # unticked: the speed preset decides
                nmf_iters=self.ui.nmfIterationsSpinBox.value or None, skip_nmf=skip or None,
                saveFolder=saveFolder, saveOverwrite=saveOverwrite, dicom_seg=dicomSeg,
                **({"format": saveFormat} if saveFolder else {}),
                register=self.ui.registerComboBox.currentData if self.task.register_inputs else "auto",
                uncertainty=self.ui.uncertaintyCheckBox.checked,
                progressCallback=self.onProgress, completedCallback=self.onCompleted)
        except Exception as exc:
            self._job = None
            self.ui.statusLabel.text = str(exc)
            slicer.util.errorDisplay(str(exc))
        self.updateGuiState()

    def onProgress(self, event: WorkerEvent):
        if event.kind == "log" and event.message:
            self.appendLog(event.message)
        if self._tracker is not None and self._tracker.update(event):
            self.ui.progressBar.setValue(self._tracker.percent)
            self.ui.progressBar.setFormat(self._tracker.bar_format)
            self.ui.statusLabel.text = self._tracker.text

    def appendLog(self, text: str):
        self.ui.logTextEdit.appendPlainText(text)

    def onCompleted(self, result: "SegmentationResult"):
        self._job = None
        self.updateGuiState()  # first: the button must leave "Cancel" whatever happens below
        if not result.succeeded:
            self.ui.progressBar.setFormat(_("Cancelled") if result.cancelled else _("Failed"))
            self.ui.statusLabel.text = result.message
            if not result.cancelled:
                slicer.util.errorDisplay(result.message, detailedText="\n".join(result.log[-200:]))
            return
        self.ui.progressBar.setValue(100)
        self.ui.progressBar.setFormat(_("Done"))
        # The output selector stays as it was (normally "create new"), so the next case cannot
        # overwrite this one by accident; the 3D button follows the new result.
        self.ui.show3DButton.setSegmentationNode(result.segmentationNode)
        try:
            self._rememberRunTime(result)
            self.onModelChanged()  # the card shows the time just measured
            self.showResults(result)
        except Exception as exc:
            logging.exception("LesionFactorizer: showing the results failed")
            self.ui.statusLabel.text = _("The segmentation is in the scene, but the results could not be shown: "
                                         "{error}").format(error=exc)
            return
        self.ui.statusLabel.text = _("Done in {seconds:.0f} s.").format(seconds=result.elapsedSeconds)
        if result.savedFolder:
            self.ui.statusLabel.text += " " + _("Results saved in {folder}.").format(folder=result.savedFolder)
        if result.dicomSegFile:
            self.ui.statusLabel.text += " " + _("DICOM SEG added to the DICOM database (send it to PACS from the "
                                               "DICOM module).")

    # ---- results and component browser

    def _resetResults(self):
        self._releaseNavigator()
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

    # ---- lesion navigator (decisions in LesionFactorizerModuleLib/navigator.py)

    def _navigator(self):
        return self._result.navigator if self._result is not None else None

    def _releaseNavigator(self):
        """Put hidden lesions back into the segmentation before its result is let go."""
        nav = self._navigator()
        node = self._result.segmentationNode if self._result is not None else None
        if nav is None or not nav.threshold or node is None or node.GetScene() is None:
            return
        try:
            self.logic.setLesionConfidenceThreshold(self._result, 0.0)
        except Exception:  # the node is being removed with its scene: nothing left to restore
            logging.exception("LesionFactorizer: hidden lesions could not be restored")

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

    def _configureComponentSlider(self, value=0):
        layer = self._currentLayer()
        slider = self.ui.componentSlider
        wasBlocked = slider.blockSignals(True)
        slider.maximum = max(layer.count - 1, 0) if layer is not None else 0
        slider.value = value
        slider.blockSignals(wasBlocked)

    def onComponentLayerChanged(self, *args):
        self._configureComponentSlider()
        self.onComponentDisplayChanged()

    def _currentLayer(self):
        if self._result is None:
            return None
        return self._result.componentLayers.get(self.ui.componentLayerComboBox.currentData)

    def onComponentDisplayChanged(self, *args):
        layer = self._currentLayer()
        self.ui.componentScoreLabel.text = componentsLib.score_text(layer, int(self.ui.componentSlider.value))
        self.ui.dropComponentButton.enabled = layer is not None and self._result.canDropComponents \
            and self._counterfactualJob is None
        if layer is None:
            return
        colorNode = self.ui.componentColorTableSelector.currentNode()
        self.logic.showComponent(self._result, layer.name, int(self.ui.componentSlider.value),
                                 opacity=self.ui.componentOpacitySlider.value,
                                 colorNodeID=colorNode.GetID() if colorNode else None)

    def onDropComponent(self):
        """Run the counterfactual for the shown component in the worker; the GUI stays responsive."""
        layer = self._currentLayer()
        if layer is None or self._counterfactualJob is not None:
            return
        component = int(self.ui.componentSlider.value)
        self.ui.dropComponentButton.enabled = False
        self.ui.counterfactualLabel.text = _("Segmenting without {layer} #{component}...").format(
            layer=layer.title, component=component)
        try:
            self._counterfactualJob = self.logic.dropComponent(
                self._result, layer.name, component, device=self.ui.deviceComboBox.currentData,
                waitForCompletion=False, completedCallback=self.onCounterfactualDone)
        except Exception as exc:
            self._counterfactualJob = None
            self.ui.counterfactualLabel.text = str(exc)
            self.onComponentDisplayChanged()

    def onCounterfactualDone(self, outcome: "CounterfactualResult"):
        self._counterfactualJob = None
        self.ui.counterfactualLabel.text = outcome.text if outcome.succeeded else outcome.message
        self.onComponentDisplayChanged()


#
# Logic
#


@dataclass
class SegmentationResult:
    """What one run produced. Node references are None when the run failed or was cancelled."""

    task: str
    succeeded: bool = False
    cancelled: bool = False
    message: str = ""
    segmentationNode: Any = None
    report: dict = field(default_factory=dict)
    outputFolder: str = ""
    componentVolumeNodes: dict = field(default_factory=dict)  # layer -> node, created when first shown
    componentLayers: dict = field(default_factory=dict)  # layer -> componentsLib.ComponentLayer (lazy maps)
    caseFolder: str = ""  # kept report.json + segmentation + components: the counterfactual's RESULT_DIR
    caseInputs: dict = field(default_factory=dict)  # input name -> kept input file, for the counterfactual
    mapsFolderItem: int = 0  # subject hierarchy folder for maps, created when the first map is placed
    probabilityVolumeNodes: list = field(default_factory=list)
    referenceVolumeNode: Any = None
    savedFolder: str = ""  # the folder the results were saved in (saveFolder), "" when only in the scene
    dicomSegFile: str = ""  # the DICOM SEG as stored in the DICOM database, when one was asked for
    uncertaintyVolumeNode: Any = None
    reportPath: str = ""  # report.json the reader's changes are written back to
    navigator: Any = None  # navigatorLib.LesionNavigator, made when the results are shown
    log: list = field(default_factory=list)
    elapsedSeconds: float = 0.0

    @property
    def canDropComponents(self) -> bool:
        return bool(self.caseFolder and self.caseInputs and self.componentLayers)


@dataclass
class CounterfactualResult:
    """What "drop this component" produced: the difference as a segmentation, and the summary."""

    layer: str
    component: int
    succeeded: bool = False
    cancelled: bool = False
    message: str = ""
    summary: dict = field(default_factory=dict)  # counterfactual.json
    text: str = ""  # one line for the panel
    differenceNode: Any = None  # segments "added", "removed", "relabelled"
    log: list = field(default_factory=list)
    elapsedSeconds: float = 0.0


class _Job:
    """One running worker with its temporary folder and callbacks.

    It watches the scene itself (so the Python API is covered too): closing the scene or removing
    an input/output node cancels the run, and nothing is imported into a scene that changed under it.
    """

    def __init__(self, process: workerLib.WorkerProcess, tempDir: Path, finish, watchedNodes, onEnded):
        self.process, self.tempDir, self._finish, self._onEnded = process, tempDir, finish, onEnded
        self.startTime = time.monotonic()
        self.cancelRequested = False
        self.ended = False
        self.progressCallback = None
        self.completedCallback = None
        self.inputFiles: dict = {}  # input name -> file the worker read (kept for the counterfactual)
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.timeout.connect(self.poll)
        self._watched = [node for node in watchedNodes if node is not None]
        scene = slicer.mrmlScene
        self._observations = [scene.AddObserver(scene.StartCloseEvent, self._onSceneClosing),
                              scene.AddObserver(scene.NodeRemovedEvent, self._onNodeRemoved)]

    def _onSceneClosing(self, caller, event):
        self.cancel()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeRemoved(self, caller, event, node):
        if any(node is watched for watched in self._watched):
            self.cancel()

    def cancel(self):
        """Non-blocking: SIGTERM now, SIGKILL from a later poll if the tree is still alive."""
        self.cancelRequested = True
        self.process.cancel()

    def poll(self):
        for event in self.process.poll():
            if self.progressCallback:
                self.progressCallback(event)
        if not self.process.running:
            self._complete()

    def runSynchronously(self) -> SegmentationResult:
        """Poll until the worker ends, keeping the GUI painted; never leaves the worker running."""
        try:
            while self.process.running:
                for event in self.process.poll(timeout=0.1):
                    if self.progressCallback:
                        self.progressCallback(event)
                slicer.app.processEvents()
        except BaseException:  # a callback raised or the user interrupted: stop the worker too
            self.abort()
            raise
        return self._complete()

    def _complete(self):
        if self.ended:
            return None
        self._end()
        try:
            result = self._finish(self)
        finally:
            self._onEnded(self)
        if self.completedCallback:
            self.completedCallback(result)
        return result

    def _end(self):
        self.ended = True
        self.timer.stop()
        for tag in self._observations:
            slicer.mrmlScene.RemoveObserver(tag)
        self._observations = []

    def abort(self):
        """Stop everything now without waiting (module cleanup): no import, no callback."""
        if self.ended:
            return
        self._end()
        self.cancel()  # SIGTERM to the tree; with the timer stopped there is no SIGKILL follow-up
        self._onEnded(self)


class LesionFactorizerLogic(ScriptedLoadableModuleLogic):
    """Segmentation from the GUI or from the Python console.

    Batch example (synchronous)::

        logic = slicer.util.getModuleLogic("LesionFactorizer")
        result = logic.segment({"dwi": dwiNode, "adc": adcNode}, task="stroke")
        print(result.report["labels"])
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.pythonExecutable = None  # default: PythonSlicer next to Slicer
        self.keepTemporaryFiles = False  # for debugging the worker
        self.server = None  # (URL, token): segment on a `lesion-factorizer serve` machine (remoteLib)
        self._componentFolders: list[Path] = []  # component maps the browser may still read (see _keepComponents)
        # Asynchronous jobs are polled by their own timer; holding them here keeps them (and the
        # timer) alive when the caller drops the returned job.
        self._jobs: set[_Job] = set()

    # ---- models and dependencies

    def availableModels(self, task=None, errors=None) -> list:
        """Model cards (bundled and user models) for a task; unreadable files are listed in errors."""
        return modelsLib.list_cards(task=task, errors=errors)

    @staticmethod
    def defaultModelCard(task: str, cards: list):
        """The card of the model the worker uses without --model (the library's rule), or None."""
        try:
            path = Path(modelfile.default_model(task)).resolve()
        except UserError:
            return None
        return next((c for c in cards if Path(c.path).resolve() == path), None)

    def importModel(self, path) -> modelsLib.ModelCard:
        """Verify a .safetensors model file and copy it to the user model folder."""
        return modelsLib.import_model(path)

    def setupPythonRequirements(self, askConfirmation=True, outputFormat="", dicomSeg=False) -> bool:
        """Install missing worker packages (one confirmation listing them). True when ready to run.

        outputFormat, dicomSeg: the run's outputs; some need packages of their own (seg.nrrd, DICOM SEG)."""
        if dependenciesLib.unsupported_python():
            slicer.util.errorDisplay(dependenciesLib.unsupported_python())
            return False
        needed = dependenciesLib.required(outputFormat, dicomSeg)
        plan = dependenciesLib.install_plan(dependenciesLib.check(dependencies=needed))
        if plan.empty:
            return True
        if plan.blocked:
            slicer.util.errorDisplay(_("Incompatible packages bundled with Slicer:\n") + "\n".join(plan.blocked))
            return False
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(plan.confirmation_text()):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing Python packages failed."), waitCursor=True):
            if plan.torch:
                if not hasattr(slicer.modules, "pytorchutils"):
                    raise RuntimeError(_("Install the 'PyTorch' extension in the Extensions Manager, restart "
                                         "Slicer, and press Segment again."))
                import PyTorchUtils

                # The PyTorch extension may import torch into Slicer's own process while installing;
                # that is harmless here because only the worker (a fresh process) uses torch.
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                        askConfirmation=False, torchVersionRequirement=plan.torch[len("torch"):]) is None:
                    raise RuntimeError(_("PyTorch was not installed; open the PyTorch Utils module for details."))
            if plan.pip:
                constraints = Path(slicer.util.tempDirectory("LesionFactorizer")) / "constraints.txt"
                constraints.write_text(dependenciesLib.protected_constraints(), encoding="utf-8")
                try:
                    slicer.util.pip_install(dependenciesLib.pip_arguments(plan, str(constraints)))
                finally:
                    shutil.rmtree(constraints.parent, ignore_errors=True)
        # The worker is a fresh process that imports the new packages itself: no restart needed,
        # only a check that the installation really satisfies the requirements now.
        importlib.invalidate_caches()
        problems = dependenciesLib.check(dependencies=needed)
        if problems:
            slicer.util.errorDisplay(_("These packages are still missing or incompatible:\n")
                                     + "\n".join(p.describe() for p in problems))
        return not problems

    # ---- the Python API

    def segment(self, inputs, task="tumor", outputSegmentation=None, overwrite=False, waitForCompletion=True,
                progressCallback: Callable[[WorkerEvent], None] | None = None,
                completedCallback: Callable[[SegmentationResult], None] | None = None,
                saveFolder=None, saveOverwrite=False, **settings):
        """Segment volume nodes.

        inputs: {input name: vtkMRMLScalarVolumeNode} with the task's input names.
        settings: any segment setting by its option name (``LesionFactorizerLib.pipeline.settings``,
          the same as the ``segment`` command's options: models, device, preset, tta, nmf_iters,
          skip_nmf, components, probabilities, ...); ``models`` is a model name or .safetensors
          path, or a list of them (ensemble); not given: the task's default model. The module
          asks for NMF components unless ``components=False``.
        outputSegmentation: segmentation node to write into, or None to create one. A node that
          already has segments is only written with overwrite=True (segments named like the task's
          labels are replaced; others are kept).
        register: ms-new only: put the baseline on the follow-up ("auto": register rigidly when the pair
          is misaligned, "rigid", "affine", "never": warn only); result.report["registration"] says what was done.
        waitForCompletion: True returns a SegmentationResult (raises RuntimeError on failure);
          False returns a job (job.cancel()) and calls completedCallback(result) at the end.
        Closing the scene or removing an input/output node cancels the run.
        saveFolder: also keep the result files there, the segmentation in the ``format`` setting
          (default seg.nrrd: opens in Slicer with names, colours, terminology); a folder holding
          results needs saveOverwrite=True.
        dicom_seg=True: also write a DICOM SEG over the reference input's DICOM series (the input must
          have been loaded from DICOM) and add it to the DICOM database, from where it is sent to PACS.
        """
        self._requireSupportedPython()
        taskDef = get_task(task)
        nodes = {name: node for name, node in inputs.items() if node is not None}
        problems = inputsLib.input_problems(taskDef, {n: nodes[n].GetID() if n in nodes else None
                                                      for n in taskDef.input_names})
        unknown = sorted(set(nodes) - set(taskDef.input_names))
        if unknown:
            raise ValueError(f"Unknown input(s) {', '.join(unknown)} for task {task}; "
                             f"its inputs are {', '.join(taskDef.input_names)}.")
        if problems:
            raise ValueError(inputsLib.problems_summary(taskDef, problems))
        if outputSegmentation is not None and outputSegmentation.GetSegmentation().GetNumberOfSegments() > 0 \
                and not overwrite:
            raise ValueError(f"'{outputSegmentation.GetName()}' already has segments; pass overwrite=True "
                             f"to replace the task's segments, or outputSegmentation=None for a new node.")
        problem = exportsLib.save_folder_problem(saveFolder)
        if problem:
            raise ValueError(problem)
        dicomFiles = self._dicomSeries(taskDef, nodes) if settings.get("dicom_seg") else None

        tempDir = Path(slicer.util.tempDirectory("LesionFactorizer"))
        process = None
        try:
            inputFiles = {}
            if dicomFiles:  # the reference input as its DICOM series: the SEG references its instances
                inputFiles[taskDef.reference] = exportsLib.stage_series(dicomFiles, tempDir / "input-dicom")
            for name, node in nodes.items():
                if name in inputFiles:
                    continue
                path = tempDir / f"input-{name}.nrrd"
                if not slicer.util.exportNode(node, str(path), {"useCompression": 0}, world=True):
                    raise RuntimeError(f"'{node.GetName()}' could not be written to the temporary folder {tempDir} "
                                       f"(disk full or not writable?); see the application log.")
                inputFiles[name] = path
            # the worker writes into a temporary folder the module imports from, or straight into the
            # user's save folder (atomically); the QC picture is not needed because Slicer shows the
            # result itself
            outputDir = Path(saveFolder) if saveFolder else tempDir / "output"
            if saveFolder:
                settings.setdefault("format", exportsLib.DEFAULT_SAVE_FORMAT)
            request = workerLib.SegmentRequest(task, inputFiles, outputDir,
                                               **{"components": True, **settings, "overview": False,
                                                  "overwrite": bool(saveOverwrite)})
            process = self._launch(request)
            job = _Job(process, tempDir,
                       finish=lambda job: self._finishJob(job, taskDef, nodes, outputSegmentation, outputDir,
                                                          saved=bool(saveFolder)),
                       watchedNodes=[*nodes.values(), outputSegmentation], onEnded=self._jobEnded)
            job.inputFiles = inputFiles
        except BaseException:
            if process is not None:
                process.cancel()
            self._removeTempDir(tempDir)
            raise
        return self._follow(job, waitForCompletion, progressCallback, completedCallback)

    def _follow(self, job: _Job, waitForCompletion, progressCallback, completedCallback):
        """Track a started job: return it at once (completedCallback at its end), or wait for it
        and return its result, raising RuntimeError with its message when it failed."""
        self._jobs.add(job)
        job.progressCallback = progressCallback
        job.completedCallback = completedCallback
        if not waitForCompletion:
            job.timer.start()
            return job
        outcome = job.runSynchronously()
        if not outcome.succeeded:
            raise RuntimeError(outcome.message)
        return outcome

    def abortAll(self):
        """Cancel every running job without waiting and remove its temporary files."""
        for job in list(self._jobs):
            job.abort()

    def _jobEnded(self, job: _Job):
        self._jobs.discard(job)
        self._removeTempDir(job.tempDir)

    @staticmethod
    def _requireSupportedPython():
        problem = dependenciesLib.unsupported_python()
        if problem:
            raise RuntimeError(problem)

    # ---- worker launch

    def workerPython(self) -> str:
        """The interpreter the worker runs in: Slicer's PythonSlicer (same packages as Slicer)."""
        if self.pythonExecutable:
            return self.pythonExecutable
        found = shutil.which("PythonSlicer")
        if found is None:
            raise RuntimeError("PythonSlicer was not found on PATH; start Slicer from its launcher.")
        return found

    def _launch(self, request: workerLib.SegmentRequest) -> workerLib.WorkerProcess:
        if self.server:
            return remoteLib.RemoteRun(*self.server, request)
        return self._start(workerLib.build_segment_command(self.workerPython(), request))

    def _start(self, args: list) -> workerLib.WorkerProcess:
        env = workerLib.worker_environment(slicer.util.startupEnvironment(), _LIBRARY_ROOT)
        if os.environ.get(modelfile.ENV_MODELS):  # the worker searches the models the GUI listed
            env[modelfile.ENV_MODELS] = os.environ[modelfile.ENV_MODELS]
        logging.info("LesionFactorizer worker: %s", " ".join(args))
        return workerLib.WorkerProcess(args, env=env)

    def _removeTempDir(self, tempDir):
        if not self.keepTemporaryFiles:
            shutil.rmtree(tempDir, ignore_errors=True)

    def _dicomSeries(self, taskDef: Task, nodes: dict) -> list:
        """The files of the DICOM series the reference input was loaded from (ValueError if none)."""
        node = nodes.get(taskDef.reference)
        uids = exportsLib.instance_uids(node.GetAttribute(exportsLib.DICOM_UIDS_ATTRIBUTE)) if node else []
        files = [slicer.dicomDatabase.fileForInstance(uid) for uid in uids]
        transformed = node is not None and node.GetParentTransformNode() is not None
        problem = exportsLib.dicom_seg_problem(taskDef.input(taskDef.reference).title, uids, files, transformed)
        if problem:
            raise ValueError(problem)
        return files

    def _finishJob(self, job: _Job, taskDef: Task, nodes: dict, outputSegmentation, outputDir=None,
                   saved=False) -> SegmentationResult:
        workerResult = job.process.result()
        cancelled = workerResult.cancelled or job.cancelRequested
        result = SegmentationResult(task=taskDef.name, cancelled=cancelled, log=workerResult.log,
                                    elapsedSeconds=time.monotonic() - job.startTime)
        if cancelled or not workerResult.succeeded:
            result.message = _("Segmentation cancelled.") if cancelled else workerLib.failure_message(workerResult)
            return result
        outputDir = Path(outputDir or Path(job.tempDir) / "output")
        if self.keepTemporaryFiles or saved:
            result.outputFolder = str(outputDir)
        result.savedFolder = str(outputDir) if saved else ""
        try:
            files = find_outputs(outputDir, workerResult.outputs)
            self.importResults(result, files, taskDef, nodes, outputSegmentation)
            self._keepCase(result, files, job.inputFiles)
            result.succeeded = True
        except Exception as exc:
            logging.exception("LesionFactorizer: importing results failed")
            result.message = f"The results could not be loaded: {exc}"
        return result

    # ---- result import

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
        elif result.report.get("components_note"):
            result.message = str(result.report["components_note"])
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

    @staticmethod
    def addToDicomDatabase(path, report) -> str:
        """Import the DICOM SEG into Slicer's DICOM database (copied there, so it outlives the run's
        temporary folder); returns the stored file."""
        from DICOMLib import DICOMUtils

        staging = Path(slicer.util.tempDirectory("LesionFactorizerDicomSeg"))
        try:
            shutil.copyfile(str(path), str(staging / Path(path).name))
            DICOMUtils.importDicom(str(staging), slicer.dicomDatabase, True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        stored = slicer.dicomDatabase.fileForInstance(str(report.get("dicom_seg", {}).get("sop_instance_uid", "")))
        if not stored:
            raise RuntimeError(f"{path} could not be added to the DICOM database")
        return stored

    def _keepReport(self, path: Path) -> Path:
        """report.json where the reader's changes (rejected lesions) are written back: the output
        folder when temporary files are kept, else a copy that lives until the scene is closed
        (the changes are also kept on the segmentation node, which is saved with the scene)."""
        if self.keepTemporaryFiles:
            return Path(path)
        keep = Path(slicer.util.tempDirectory("LesionFactorizerReports"))
        self._componentFolders.append(keep)
        return Path(shutil.copy2(str(path), str(keep / "report.json")))

    # ---- lesion navigator

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
        """Copy the navigator's labels of these label values back into their segments."""
        ids = self._segmentIds(result)
        labels = result.navigator.labels
        for value in values:
            if ids.get(value):
                slicer.util.updateSegmentBinaryLabelmapFromArray((labels == value).astype(np.uint8),
                                                                 result.segmentationNode, ids[value],
                                                                 result.referenceVolumeNode)

    @staticmethod
    def jumpToLesion(lesion):
        """Centre every slice view on the lesion's centroid (RAS)."""
        slicer.modules.markups.logic().JumpSlicesToLocation(*lesion.centroid_ras, True)

    def setLesionConfidenceThreshold(self, result: SegmentationResult, threshold: float):
        """Hide lesions under ``threshold`` from the segmentation (kept, not deleted)."""
        self._updateSegments(result, result.navigator.set_threshold(threshold))

    def rejectLesion(self, result: SegmentationResult, lesionId: int, reader=None) -> dict:
        """Remove a lesion's voxels and record the reader's change in report.json and on the node."""
        values, change = result.navigator.reject(lesionId, reader)
        self._updateSegments(result, values)
        navigatorLib.write_report(result.reportPath, result.report)
        result.segmentationNode.SetAttribute("LesionFactorizer.ReaderChanges",
                                             json.dumps(result.report["reader_changes"]))
        return change

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
        used = {entry.get("name") for entry in result.report.get("inputs", [])}  # an optional input may be unused
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
                existing = segmentation.GetSegmentIdBySegmentName(spec.name)
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

    # ---- component browser and "drop this component"

    def dropComponent(self, result: SegmentationResult, layerName: str, component: int, device="auto",
                      waitForCompletion=True, progressCallback=None,
                      completedCallback: Callable[["CounterfactualResult"], None] | None = None):
        """Segment ``result``'s case again with one NMF component left out of its layer (in the worker)
        and add the difference as a segmentation: "added" (green), "removed" (red), "relabelled".

        Returns a CounterfactualResult (waitForCompletion=True; raises RuntimeError on failure) or the
        job (job.cancel()), calling completedCallback(outcome) at the end.
        """
        self._requireSupportedPython()
        if not result.canDropComponents:
            raise ValueError("This result keeps no component maps and inputs to re-run; segment with "
                             "components=True first.")
        layer = result.componentLayers.get(layerName)
        if layer is None or not 0 <= int(component) < layer.count:
            raise ValueError(f"No component {component} in layer {layerName!r}.")
        tempDir = Path(slicer.util.tempDirectory("LesionFactorizer"))
        process = None
        try:
            request = workerLib.CounterfactualRequest(result.caseFolder, layerName, int(component),
                                                      tempDir / "counterfactual", result.caseInputs, device)
            process = self._start(workerLib.build_counterfactual_command(self.workerPython(), request))
            job = _Job(process, tempDir,
                       finish=lambda job: self._finishCounterfactual(job, result, layerName, int(component)),
                       watchedNodes=[result.referenceVolumeNode], onEnded=self._jobEnded)
        except BaseException:
            if process is not None:
                process.cancel()
            self._removeTempDir(tempDir)
            raise
        return self._follow(job, waitForCompletion, progressCallback, completedCallback)

    def _finishCounterfactual(self, job: _Job, result: SegmentationResult, layerName: str,
                              component: int) -> "CounterfactualResult":
        workerResult = job.process.result()
        cancelled = workerResult.cancelled or job.cancelRequested
        outcome = CounterfactualResult(layer=layerName, component=component, cancelled=cancelled,
                                       log=workerResult.log, elapsedSeconds=time.monotonic() - job.startTime)
        if cancelled or not workerResult.succeeded:
            outcome.message = _("Cancelled.") if cancelled else workerLib.failure_message(workerResult)
            return outcome
        try:
            folder = Path(job.tempDir) / "counterfactual"
            outcome.summary = json.loads((folder / "counterfactual.json").read_text(encoding="utf-8"))
            outcome.text = componentsLib.counterfactual_text(outcome.summary)
            title = f"without {result.componentLayers[layerName].title} #{component}"
            outcome.differenceNode = self.importDifference(folder / outcome.summary["outputs"]["difference"],
                                                           result, title)
            outcome.succeeded = True
        except Exception as exc:
            logging.exception("LesionFactorizer: importing the counterfactual failed")
            outcome.message = f"The counterfactual could not be loaded: {exc}"
        return outcome

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

    def showComponent(self, result: SegmentationResult, layerName: str, index: int, opacity=0.5,
                      colorNodeID=None):
        """Show component ``index`` of a layer as the foreground over the reference input.

        The first call for a layer reads its maps and creates its volume node; later calls only
        swap the displayed voxels, so moving the slider is instant.
        """
        layer = result.componentLayers[layerName]
        index = min(max(int(index), 0), layer.count - 1)
        node = result.componentVolumeNodes.get(layerName)
        if node is None:
            node = slicer.util.addVolumeFromArray(
                layer.maps[index], ijkToRAS=layer.ijk_to_ras,
                name=f"{result.referenceVolumeNode.GetName()} NMF {layer.title}")
            self._placeInFolder(result, node, "component")
            result.componentVolumeNodes[layerName] = node
        else:
            slicer.util.updateVolumeFromArray(node, layer.maps[index])
        display = node.GetDisplayNode()
        if display is None:
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(*layer.window(index))
        if colorNodeID:
            display.SetAndObserveColorNodeID(colorNodeID)
        slicer.util.setSliceViewerLayers(background=result.referenceVolumeNode, foreground=node,
                                         foregroundOpacity=opacity)


#
# Test
#


class LesionFactorizerTest(ScriptedLoadableModuleTest):
    """Runs the real worker on the bundled sample case and checks what arrives in the scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSampleCase()

    def test_SegmentSampleCase(self):
        import SampleData

        registerSampleData()
        logic = LesionFactorizerLogic()
        if dependenciesLib.check():
            self.delayDisplay("Worker dependencies (torch, safetensors, ...) are not installed; skipping the run.")
            return
        cases = samplesLib.discover_sample_cases(bundled_resources(_LIBRARY_ROOT) / "SampleData")
        self.assertTrue(cases, "no bundled sample case found")
        case = next((c for c in cases if c.task == "stroke"), cases[0])
        if not logic.availableModels(case.task):
            self.delayDisplay(f"No model for task {case.task} is installed; skipping the run.")
            return
        nodes = SampleData.downloadSamples(case.name)
        self.assertEqual(len(nodes), len(case.files))
        inputs = {f.input_name: node for f, node in zip(case.files, nodes)}
        task = get_task(case.task)
        assigned = inputsLib.assign_inputs(task, {n.GetID(): n.GetName() for n in nodes})
        self.assertEqual(assigned, {spec.name: inputs[spec.name].GetID() if spec.name in inputs else None
                                    for spec in task.inputs})

        progress = []
        result = logic.segment(inputs, task=case.task, preset="fast", device="cpu", components=True,
                               progressCallback=progress.append)
        self.assertTrue(result.succeeded, result.message)
        self.assertTrue(any(e.kind == "progress" for e in progress))
        segmentation = result.segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), len(task.labels))
        for spec in resultsLib.segment_specs(task):
            segmentId = segmentation.GetSegmentIdBySegmentName(spec.name)
            self.assertTrue(segmentId)
            entry = vtk.mutable("")
            self.assertTrue(segmentation.GetSegment(segmentId).GetTag(
                slicer.vtkSegment.GetTerminologyEntryTagName(), entry))
            self.assertEqual(entry.get(), spec.terminology)
        rows = reportLib.result_rows(result.report, task.labels)
        self.assertEqual(len(rows), len(task.labels))
        self.assertTrue(any(row.volume_ml > 0 for row in rows), "the sample lesion was not found")
        default = logic.defaultModelCard(case.task, logic.availableModels(case.task))
        self.assertEqual(bool(result.componentLayers), default.has_components)
        self.assertFalse(result.componentVolumeNodes)  # nothing is read before the browser asks
        for name, layer in result.componentLayers.items():
            logic.showComponent(result, name, layer.count - 1)
            node = result.componentVolumeNodes[name]
            self.assertEqual(slicer.util.arrayFromVolume(node).shape, layer.maps.shape[1:])
        best = componentsLib.best_component(result.componentLayers)
        if best is not None:  # "Drop this component" on the component that best explains the lesion
            outcome = logic.dropComponent(result, *best, device="cpu")
            self.assertEqual(outcome.differenceNode.GetSegmentation().GetNumberOfSegments(),
                             len(componentsLib.DIFFERENCE_SEGMENTS))
            self.assertIn("lesion", outcome.text)
        with self.assertRaises(ValueError):  # writing into a non-empty segmentation needs overwrite=True
            logic.segment(inputs, task=case.task, outputSegmentation=result.segmentationNode)
        self.delayDisplay("LesionFactorizer self-test passed")
