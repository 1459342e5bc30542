"""The scene's data going out to files: the inputs for the worker, the DICOM series behind an input
(for a DICOM SEG), and a DICOM SEG stored in Slicer's DICOM database. Mixed into the module's logic."""

from __future__ import annotations

import shutil
from pathlib import Path

import slicer

from LesionFactorizerLib.core.reportspec import view
from LesionFactorizerLib.core.tasks import Task
from LesionFactorizerModuleLib import exports as exportsLib


class SceneExportMixin:
    def _exportInputs(self, taskDef: Task, nodes: dict, dicomFiles, tempDir: Path) -> dict:
        """The worker's input files: each volume as .nrrd in world space, the reference as its DICOM
        series when a DICOM SEG is asked for (the SEG references its instances)."""
        inputFiles = {}
        if dicomFiles:
            inputFiles[taskDef.reference] = exportsLib.stage_series(dicomFiles, tempDir / "input-dicom")
        for name, node in nodes.items():
            if name in inputFiles:
                continue
            path = tempDir / f"input-{name}.nrrd"
            if not slicer.util.exportNode(node, str(path), {"useCompression": 0}, world=True):
                raise RuntimeError(f"'{node.GetName()}' could not be written to the temporary folder {tempDir} "
                                   f"(disk full or not writable?); see the application log.")
            inputFiles[name] = path
        return inputFiles

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
        stored = slicer.dicomDatabase.fileForInstance(str((view(report).dicom_seg or {}).get("sop_instance_uid", "")))
        if not stored:
            raise RuntimeError(f"{path} could not be added to the DICOM database")
        return stored
