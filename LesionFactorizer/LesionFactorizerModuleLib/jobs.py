"""Running the worker from Slicer: the Python API ``segment``, "drop this component", and following
a job (progress, cancel, completion) with the scene watched under it.

The worker is ``PythonSlicer -m LesionFactorizerLib ...`` (``worker.py`` builds and runs it); the
inputs go to it as files (``sceneexport.py``) and its outputs come back into the scene
(``sceneimport.py``). Mixed into the module's logic.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import qt
import slicer
import vtk
from slicer.i18n import tr as _

from LesionFactorizerLib import modelfile
from LesionFactorizerLib.core.reportspec import COUNTERFACTUAL_FOLDER, COUNTERFACTUAL_OUTPUTS
from LesionFactorizerLib.core.tasks import Task, get_task
from LesionFactorizerModuleLib import components as componentsLib
from LesionFactorizerModuleLib import dependencies as dependenciesLib
from LesionFactorizerModuleLib import exports as exportsLib
from LesionFactorizerModuleLib import inputs as inputsLib
from LesionFactorizerModuleLib import remote as remoteLib
from LesionFactorizerModuleLib import worker as workerLib
from LesionFactorizerModuleLib.outputs import find_outputs
from LesionFactorizerModuleLib.progress import WorkerEvent


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


class Job:
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



class JobsMixin:
    """The logic's worker runs; needs ``libraryRoot``, ``pythonExecutable``, ``keepTemporaryFiles`` and ``_jobs``."""

    def segment(self, inputs, task="tumor", outputSegmentation=None, overwrite=False, waitForCompletion=True,
                progressCallback: Callable[[WorkerEvent], None] | None = None,
                completedCallback: Callable[[SegmentationResult], None] | None = None,
                saveFolder=None, saveOverwrite=False, **settings):
        """Segment volume nodes.

        inputs: {input name: vtkMRMLScalarVolumeNode} with the task's input names.
        settings: any segment setting by its option name (``LesionFactorizerLib.core.settings``,
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
        transformed = inputsLib.transformed_problem(inputsLib.transformed_names(nodes.values()))
        if transformed:
            raise ValueError(transformed)
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
            inputFiles = self._exportInputs(taskDef, nodes, dicomFiles, tempDir)
            # the worker writes into a temporary folder the module imports from, or straight into the
            # user's save folder (atomically); the QC picture is not needed because Slicer shows the
            # result itself
            outputDir = Path(saveFolder) if saveFolder else tempDir / "output"
            if saveFolder:
                settings.setdefault("format", exportsLib.DEFAULT_SAVE_FORMAT)
            request = workerLib.SegmentRequest.of(task, inputFiles, outputDir,
                                                  **{"components": True, **settings, "overview": False,
                                                     "overwrite": bool(saveOverwrite)})
            process = self._launch(request)
            job = Job(process, tempDir,
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

    def _follow(self, job: Job, waitForCompletion, progressCallback, completedCallback):
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

    def _jobEnded(self, job: Job):
        self._jobs.discard(job)
        self._removeTempDir(job.tempDir)

    @staticmethod
    def _requireSupportedPython():
        problem = dependenciesLib.unsupported_python()
        if problem:
            raise RuntimeError(problem)

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
        env = workerLib.worker_environment(slicer.util.startupEnvironment(), self.libraryRoot)
        if os.environ.get(modelfile.ENV_MODELS):  # the worker searches the models the GUI listed
            env[modelfile.ENV_MODELS] = os.environ[modelfile.ENV_MODELS]
        logging.info("LesionFactorizer worker: %s", " ".join(args))
        return workerLib.WorkerProcess(args, env=env)

    def _removeTempDir(self, tempDir):
        if not self.keepTemporaryFiles:
            shutil.rmtree(tempDir, ignore_errors=True)

    def _finishJob(self, job: Job, taskDef: Task, nodes: dict, outputSegmentation, outputDir=None,
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
            job = Job(process, tempDir,
                      finish=lambda job: self._finishCounterfactual(job, result, layerName, int(component)),
                      watchedNodes=[result.referenceVolumeNode], onEnded=self._jobEnded)
        except BaseException:
            if process is not None:
                process.cancel()
            self._removeTempDir(tempDir)
            raise
        return self._follow(job, waitForCompletion, progressCallback, completedCallback)

    def _finishCounterfactual(self, job: Job, result: SegmentationResult, layerName: str,
                              component: int) -> "CounterfactualResult":
        workerResult = job.process.result()
        cancelled = workerResult.cancelled or job.cancelRequested
        outcome = CounterfactualResult(layer=layerName, component=component, cancelled=cancelled,
                                       log=workerResult.log, elapsedSeconds=time.monotonic() - job.startTime)
        if cancelled or not workerResult.succeeded:
            outcome.message = _("Cancelled.") if cancelled else workerLib.failure_message(workerResult)
            return outcome
        try:
            folder = Path(job.tempDir) / COUNTERFACTUAL_FOLDER
            outcome.summary = json.loads((folder / COUNTERFACTUAL_OUTPUTS.summary.name).read_text(encoding="utf-8"))
            outcome.text = componentsLib.counterfactual_text(outcome.summary)
            title = f"without {result.componentLayers[layerName].title} #{component}"
            outcome.differenceNode = self.importDifference(folder / outcome.summary["outputs"][COUNTERFACTUAL_OUTPUTS.difference.key],
                                                           result, title)
            outcome.succeeded = True
        except Exception as exc:
            logging.exception("LesionFactorizer: importing the counterfactual failed")
            outcome.message = f"The counterfactual could not be loaded: {exc}"
        return outcome
