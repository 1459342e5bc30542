"""Where results go besides the scene: a folder of files, and a DICOM SEG back to the DICOM database.

Decided without Slicer, so pytest checks it: which file formats the "Save to folder" selector
offers (the library's output formats), whether an input volume came from a DICOM series (Slicer's
DICOM loader records the series' SOP Instance UIDs in the node attribute ``DICOM.instanceUIDs``),
and the folder the worker reads that series from. The module only asks Slicer's DICOM database for
the files of those instances and imports the finished SEG into it, from where the DICOM module
sends it to PACS.

Pure Python (3.9+): imported by the Slicer GUI process.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from LesionFactorizerLib.core.settings import FORMATS
from LesionFactorizerLib.core.reportspec import REPORT_NAME  # marks a folder that already holds results of a run

# Slicer's DICOM scalar volume loader sets this attribute: the SOP Instance UIDs of the slices,
# separated by spaces.
DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
DEFAULT_SAVE_FORMAT = "seg.nrrd"   # opens in Slicer with names, colours and terminology in place
_FORMAT_TITLES = {"seg.nrrd": "Slicer segmentation (.seg.nrrd)", "nii.gz": "NIfTI, compressed (.nii.gz)",
                  "nii": "NIfTI (.nii)", "nrrd": "NRRD label map (.nrrd)", "mha": "MetaImage (.mha)"}
# (value, title) for the format selector: every output format of the library, the default first.
SAVE_FORMATS: Tuple[Tuple[str, str], ...] = tuple(
    (f, _FORMAT_TITLES.get(f, f)) for f in sorted(FORMATS, key=lambda f: f != DEFAULT_SAVE_FORMAT))


def instance_uids(attribute: Optional[str]) -> List[str]:
    """The SOP Instance UIDs a volume node was loaded from ([] when it was not loaded from DICOM)."""
    return [uid for uid in (attribute or "").split() if uid]


def dicom_seg_problem(reference_title: str, uids: Sequence[str], files: Sequence[Optional[str]],
                      transformed: bool = False) -> str:
    """Why no DICOM SEG can be made for the reference input, or "" when it can.

    The worker reads the series as it was acquired, so a volume moved by a transform in the scene
    would be segmented where the scanner put it, not where the user sees it."""
    if not uids:
        return (f"A DICOM SEG needs the {reference_title} input loaded from a DICOM series (DICOM module); "
                "this volume was not.")
    if transformed:
        return (f"The {reference_title} input is under a transform; a DICOM SEG is made on the series as acquired. "
                "Remove the transform from that volume, or uncheck DICOM SEG.")
    missing = [uid for uid, path in zip(uids, files) if not path or not os.path.isfile(path)]
    if missing:
        return (f"{len(missing)} of the {len(uids)} DICOM files of the {reference_title} input are no longer in the "
                "DICOM database; import the series again, or uncheck DICOM SEG.")
    return ""


def stage_series(files: Iterable[str], folder: os.PathLike) -> Path:
    """Copy the series' files into ``folder``, which the worker reads as that input's DICOM series.

    Copies, not links: the database's files stay untouched, and Windows needs no link rights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        shutil.copyfile(path, folder / f"{i:05d}.dcm")
    return folder


def save_folder_problem(folder: Optional[str]) -> str:
    """Why results cannot be saved to ``folder`` (empty: not saving), or ""."""
    if not folder:
        return ""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return f"'{folder}' is a file; choose a folder to save the results in."
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK):
        return f"'{folder}' cannot be written; choose a writable folder."
    return ""


def holds_results(folder: Optional[str]) -> bool:
    """True when saving there replaces the results of an earlier run (the user is asked first)."""
    return bool(folder) and (Path(folder) / REPORT_NAME).is_file()
