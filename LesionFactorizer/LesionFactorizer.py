"""LesionFactorizer: brain-lesion segmentation with interpretable Factorizer networks in 3D Slicer.

This file holds the module, its widget and a thin logic; their parts live in LesionFactorizerModuleLib:
  * Slicer-free helpers (pytest runs them without Slicer): worker command and process (worker.py),
    progress, inputs, dependencies, models, navigator decisions, report rows, state names, ...
  * Slicer-side parts mixed into the logic and the widget: job launch and follow (jobs.py), scene
    import (sceneimport.py), scene export (sceneexport.py), dependency setup (installer.py), the
    lesion navigator (lesionview.py), the component browser (componentview.py), the results panel
    (resultsview.py) and the parameter node state (panelstate.py).
  * LesionFactorizerTest: self-test on the bundled sample data.

The GUI process never imports torch: inference runs in `PythonSlicer -m LesionFactorizerLib
segment ...`, which reports progress as JSON lines.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

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
from LesionFactorizerLib.core.errors import UserError  # noqa: E402
from LesionFactorizerLib.core.speed_presets import DEFAULT_SPEED_PRESET, SPEED_PRESETS  # noqa: E402
from LesionFactorizerLib.core.tasks import TASKS, Task, get_task  # noqa: E402
from LesionFactorizerModuleLib import components as componentsLib  # noqa: E402
from LesionFactorizerModuleLib import dependencies as dependenciesLib  # noqa: E402
from LesionFactorizerModuleLib import exports as exportsLib  # noqa: E402
from LesionFactorizerModuleLib import inputs as inputsLib  # noqa: E402
from LesionFactorizerModuleLib import installer as installerLib  # noqa: E402
from LesionFactorizerModuleLib import models as modelsLib  # noqa: E402
from LesionFactorizerModuleLib.componentview import ComponentBrowserMixin, ComponentPanelMixin  # noqa: E402
from LesionFactorizerModuleLib.jobs import CounterfactualResult, Job, JobsMixin, SegmentationResult  # noqa: E402,F401
from LesionFactorizerModuleLib.lesionview import LesionNavigationMixin, LesionPanelMixin  # noqa: E402
from LesionFactorizerModuleLib.panelstate import ParameterNodeStateMixin  # noqa: E402
from LesionFactorizerModuleLib.resultsview import ResultsPanelMixin  # noqa: E402
from LesionFactorizerModuleLib.sceneexport import SceneExportMixin  # noqa: E402
from LesionFactorizerModuleLib.sceneimport import OUTPUT_ROLE_ATTRIBUTE, SceneImportMixin  # noqa: E402
from LesionFactorizerModuleLib import report as reportLib  # noqa: E402
from LesionFactorizerModuleLib import samples as samplesLib  # noqa: E402
from LesionFactorizerModuleLib import terminology as terminologyLib  # noqa: E402
from LesionFactorizerModuleLib import worker as workerLib  # noqa: E402
from LesionFactorizerModuleLib import remote as remoteLib  # noqa: E402
from LesionFactorizerModuleLib import results as resultsLib  # noqa: E402
from LesionFactorizerModuleLib.progress import ProgressTracker, WorkerEvent  # noqa: E402

MAX_INPUTS = 4  # selectors in the .ui; the largest task (tumor) has four inputs
SAMPLE_CATEGORY = "LesionFactorizer"


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


class LesionFactorizerWidget(ParameterNodeStateMixin, ResultsPanelMixin, LesionPanelMixin, ComponentPanelMixin,
                             ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self._restoring = True  # until the parameter node has been read: no widget change is written to it
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
        self._connectStateSignals()

        inferno = slicer.mrmlScene.GetFirstNodeByName("Inferno")  # perceptually uniform, reads well over grey
        if inferno is not None:
            self.ui.componentColorTableSelector.setCurrentNode(inferno)

        # While a scene closes or loads, selectors follow nodes leaving and arriving: the parameter
        # node is neither written then nor read until the scene is complete.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self._pauseState)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneClosed)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartImportEvent, self._pauseState)
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

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        # Nodes arrive one by one while loading: assign once, when the event loop is idle again.
        # Only a possible input counts (not the "__temp__" label volumes of segment edits).
        if node.GetClassName() == "vtkMRMLScalarVolumeNode" and not self._assignPending:
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
        self._restoring = False
        self._saveState()  # the closed scene reset the parameter node; it describes the GUI again

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
        self.ui.effectsCheckBox.enabled = self.ui.componentsCheckBox.enabled
        self.updateGuiState()

    @staticmethod
    def _measuredSeconds(card):
        value = qt.QSettings().value(f"LesionFactorizer/lastRunSeconds/{card.name}")
        return float(value) if value not in (None, "") else None

    def _rememberRunTime(self, result):
        """The model card's expected time is the last run's time on this computer (models carry none)."""
        from LesionFactorizerLib.core.reportspec import view

        report = view(result.report)
        model, total = report.model or {}, report.total_seconds
        if model.get("name") and isinstance(total, (int, float)):
            qt.QSettings().setValue(f"LesionFactorizer/lastRunSeconds/{model['name']}", float(total))

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import model"), "",
                                              _("Model files (*.safetensors)"))
        if not path:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not import the model."), waitCursor=True):
                card = self.logic.importModel(path)
        except Exception:  # shown to the user; a slot has no caller to raise to
            return
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
        reason = dependenciesLib.unsupported_python() or inputsLib.problems_summary(task, problems) or \
            inputsLib.transformed_problem(inputsLib.transformed_names(self.selectedInputs().values())) or (
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
        if not onServer and not self.logic.setupPythonRequirements(askConfirmation=True, outputFormat=saveFormat,
                                                                   dicomSeg=dicomSeg):
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
                effects=self.ui.effectsCheckBox.checked,
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


#
# Logic
#


class LesionFactorizerLogic(JobsMixin, SceneExportMixin, SceneImportMixin, LesionNavigationMixin, ComponentBrowserMixin,
                            ScriptedLoadableModuleLogic):
    """Segmentation from the GUI or from the Python console.

    Batch example (synchronous)::

        logic = slicer.util.getModuleLogic("LesionFactorizer")
        result = logic.segment({"dwi": dwiNode, "adc": adcNode}, task="stroke")
        print(result.report["labels"])
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.libraryRoot = _LIBRARY_ROOT  # put on the worker's path
        self.pythonExecutable = None  # default: PythonSlicer next to Slicer
        self.keepTemporaryFiles = False  # for debugging the worker
        self.server = None  # (URL, token): segment on a `lesion-factorizer serve` machine (remoteLib)
        self._componentFolders: list[Path] = []  # component maps the browser may still read (see _keepComponents)
        # Asynchronous jobs are polled by their own timer; holding them here keeps them (and the
        # timer) alive when the caller drops the returned job.
        self._jobs: set[Job] = set()

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

    @staticmethod
    def setupPythonRequirements(askConfirmation=True, outputFormat="", dicomSeg=False) -> bool:
        """Install missing worker packages after one confirmation; True when ready to run."""
        return installerLib.setup_python_requirements(askConfirmation, outputFormat, dicomSeg)


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
