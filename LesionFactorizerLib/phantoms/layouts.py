"""Writers for the public data-set layouts, so the same adapters read real and synthetic data.

File names and raw label values come from :mod:`LesionFactorizerLib.datasets` (the readers' own
tables, ``PHANTOM_LAYOUT``): tumor → BraTS 2021 (``BraTS2021_NNNNN/BraTS2021_NNNNN_flair.nii.gz``,
seg 1 NCR, 2 ED, 4 ET), stroke → ISLES'22 BIDS (``rawdata/sub-strokecaseNNNN/ses-0001/…``,
``derivatives/…_msk.nii.gz``), ms-new → MSSEG-2 (``NNN/flair_time01_on_middle_space.nii.gz`` …).
"""

from __future__ import annotations

import os

import numpy as np

from LesionFactorizerLib.datasets import (PHANTOM_LABELS, PHANTOM_LAYOUT, brats_files, isles22_files, msseg2_files,
                                          raw_labels)
from LesionFactorizerLib.phantoms.generate import PhantomCase

_FILES = {"brats": brats_files, "isles22": isles22_files, "msseg2": msseg2_files}


def write_nifti(array: np.ndarray, geometry: dict, path: str) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetOrigin(geometry["origin"])
    img.SetSpacing(geometry["spacing"])
    img.SetDirection(geometry["direction"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sitk.WriteImage(img, path, useCompression=True)


_CASE_ID = {"brats": lambda i: f"BraTS2021_{i:05d}", "isles22": lambda i: f"sub-strokecase{i + 1:04d}",
            "msseg2": lambda i: f"{i + 1:03d}"}


def case_id(task: str, index: int) -> str:
    """Public-style identifier of case ``index`` (BraTS counts from 0, ISLES and MSSEG-2 from 1)."""
    return _CASE_ID[PHANTOM_LAYOUT[task]](index)


def case_files(task: str, index: int) -> dict[str, str]:
    """Relative paths of one case's files, keyed by image name (and "label")."""
    stems = _FILES[PHANTOM_LAYOUT[task]](case_id(task, index))
    return {k: f"{v}.nii.gz" for k, v in stems.items()}


def case_roots(task: str, index: int) -> list[str]:
    """Top-level folders (relative) that hold exactly this case: moved into place as units."""
    # the first two path components of every file: rawdata/SUB + derivatives/SUB for BIDS, CASE otherwise
    roots = []
    for rel in case_files(task, index).values():
        parts = rel.split("/")
        root = "/".join(parts[:2]) if parts[0] in ("rawdata", "derivatives") else parts[0]
        if root not in roots:
            roots.append(root)
    return roots


def public_label(task: str, label: np.ndarray) -> np.ndarray:
    """Product labels → the public data set's values (BraTS stores enhancing tumour as 4)."""
    return raw_labels(label, PHANTOM_LABELS[task])


def write_case(case: PhantomCase, root: str) -> dict[str, str]:
    """Write one case under ``root`` in its task's public layout; returns the relative paths."""
    files = case_files(case.task, case.index)
    for key, rel in files.items():
        data = public_label(case.task, case.label) if key == "label" else case.images[key]
        write_nifti(data, case.geometry, os.path.join(root, rel))
    return files
