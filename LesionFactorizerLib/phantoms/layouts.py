"""Writers for the public data-set layouts, so the same adapters read real and synthetic data.

- tumor: BraTS 2021 — ``BraTS2021_NNNNN/BraTS2021_NNNNN_{flair,t1,t1ce,t2,seg}.nii.gz``, seg labels
  1 NCR, 2 ED, 4 ET.
- stroke: ISLES'22 BIDS — ``rawdata/sub-strokecaseNNNN/ses-0001/{dwi,anat}/…`` and
  ``derivatives/sub-strokecaseNNNN/ses-0001/…_msk.nii.gz``.
- ms-new: MSSEG-2 — ``<case>/flair_time0{1,2}_on_middle_space.nii.gz`` and ``ground_truth.nii.gz``.
"""

from __future__ import annotations

import os

import numpy as np

from LesionFactorizerLib.phantoms.generate import PhantomCase


def write_nifti(array: np.ndarray, geometry: dict, path: str) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetOrigin(geometry["origin"])
    img.SetSpacing(geometry["spacing"])
    img.SetDirection(geometry["direction"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sitk.WriteImage(img, path, useCompression=True)


def case_id(task: str, index: int) -> str:
    """Public-style identifier of case ``index`` (BraTS counts from 0, ISLES and MSSEG-2 from 1)."""
    if task == "tumor":
        return f"BraTS2021_{index:05d}"
    if task == "stroke":
        return f"sub-strokecase{index + 1:04d}"
    return f"{index + 1:03d}"


def case_files(task: str, index: int) -> dict[str, str]:
    """Relative paths of one case's files, keyed by image name (and "label")."""
    cid = case_id(task, index)
    if task == "tumor":
        names = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "label": "seg"}
        return {k: f"{cid}/{cid}_{v}.nii.gz" for k, v in names.items()}
    if task == "stroke":
        raw = f"rawdata/{cid}/ses-0001"
        return {
            "dwi": f"{raw}/dwi/{cid}_ses-0001_dwi.nii.gz",
            "adc": f"{raw}/dwi/{cid}_ses-0001_adc.nii.gz",
            "flair": f"{raw}/anat/{cid}_ses-0001_FLAIR.nii.gz",
            "label": f"derivatives/{cid}/ses-0001/{cid}_ses-0001_msk.nii.gz",
        }
    return {
        "flair_baseline": f"{cid}/flair_time01_on_middle_space.nii.gz",
        "flair_followup": f"{cid}/flair_time02_on_middle_space.nii.gz",
        "label": f"{cid}/ground_truth.nii.gz",
    }


def case_roots(task: str, index: int) -> list[str]:
    """Top-level folders (relative) that hold exactly this case: moved into place as units."""
    cid = case_id(task, index)
    if task == "stroke":
        return [f"rawdata/{cid}", f"derivatives/{cid}"]
    return [cid]


def public_label(task: str, label: np.ndarray) -> np.ndarray:
    """Product labels → the public data set's values (BraTS stores enhancing tumour as 4)."""
    if task == "tumor":
        out = label.copy()
        out[label == 3] = 4
        return out
    return label


def write_case(case: PhantomCase, root: str) -> dict[str, str]:
    """Write one case under ``root`` in its task's public layout; returns the relative paths."""
    files = case_files(case.task, case.index)
    for key, rel in files.items():
        data = public_label(case.task, case.label) if key == "label" else case.images[key]
        write_nifti(data, case.geometry, os.path.join(root, rel))
    return files
