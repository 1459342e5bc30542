"""Tumor phantoms in the Medical Segmentation Decathlon Task01 layout (what the chapter-7 BraTS
configs ``{swin,local,global}-factorizer-brats`` read, ``data.format: msd-task01``).

``imagesTr/BRATS_NNN.nii.gz`` holds the four inputs as one 4-D image in the order ``dataset.json``
declares (FLAIR, T1w, t1gd, T2w), ``labelsTr/BRATS_NNN.nii.gz`` the MSD label values (1 edema,
2 non-enhancing/necrotic, 3 enhancing), and ``dataset.json`` lists every case. Label values and
the modality names come from the reader's tables in :mod:`LesionFactorizerLib.datasets`, so the
writer cannot drift from what ``discover("msd-task01", …)`` accepts.
"""

from __future__ import annotations

import json
import os
from typing import Callable

from LesionFactorizerLib.datasets import _MSD_MODALITY_TO_INPUT, MSD_TASK01_LABELS, raw_labels
from LesionFactorizerLib.core.errors import UserError

# dataset.json's spelling of each modality, in channel order; the inputs come from the reader's table
MODALITIES = ("FLAIR", "T1w", "t1gd", "T2w")
LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
LAST_INDEX = 999     # BRATS_NNN: three digits


def case_name(index: int) -> str:
    return f"BRATS_{index:03d}"


def write_msd_task01(n: int, out: str, seed: int, spacing=None, size=None, start: int = 0,
                     overwrite: bool = False, on_case: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Write tumor cases ``start`` … ``start + n − 1`` under ``out`` and (re)write ``dataset.json``
    listing every case present. Each file is written to a temporary name and renamed, so an
    interrupted run leaves whole cases only."""
    import SimpleITK as sitk

    from LesionFactorizerLib.phantoms.generate import generate_case

    if start + n - 1 > LAST_INDEX:
        raise UserError(f"--start {start} with --n {n} goes past case index {LAST_INDEX}, the last one the "
                        "MSD layout (BRATS_NNN) can name; use a smaller --start or fewer cases")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; give a folder (it is created if missing)")
    indices = range(start, start + n)
    if not overwrite:
        for i in indices:
            path = os.path.join(out, "imagesTr", f"{case_name(i)}.nii.gz")
            if os.path.exists(path):
                raise UserError(f"{path} already exists; use --overwrite, another --out, or --start")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    records = []
    for i in indices:
        case = generate_case("tumor", seed, i, spacing=spacing, size=size)
        channels = [case.images[_MSD_MODALITY_TO_INPUT[m.lower()]] for m in MODALITIES]
        image = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in channels])
        g = case.geometry
        image.SetOrigin((*g["origin"], 0.0))
        image.SetSpacing((*g["spacing"], 1.0))
        d = g["direction"]
        image.SetDirection((d[0], d[1], d[2], 0, d[3], d[4], d[5], 0, d[6], d[7], d[8], 0, 0, 0, 0, 1))
        label = sitk.GetImageFromArray(raw_labels(case.label, MSD_TASK01_LABELS).astype("uint8"))
        label.SetOrigin(g["origin"])
        label.SetSpacing(g["spacing"])
        label.SetDirection(d)
        files = {"image": f"imagesTr/{case_name(i)}.nii.gz", "label": f"labelsTr/{case_name(i)}.nii.gz"}
        # the label first: a case counts as present by its image, so it is never listed half-written
        for key, img in (("label", label), ("image", image)):
            final = os.path.join(out, files[key])
            tmp = final[: -len(".nii.gz")] + ".tmp.nii.gz"
            sitk.WriteImage(img, tmp, useCompression=True)
            os.replace(tmp, final)
        rec = {"index": i, "files": files, "shape_xyz": list(case.label.shape[::-1]),
               "spacing_xyz": list(g["spacing"]), "parameters": case.meta}
        records.append(rec)
        if on_case:
            on_case(i, rec)
    _write_dataset_json(out)
    return records


def _write_dataset_json(out: str) -> None:
    names = sorted(f[: -len(".nii.gz")] for f in os.listdir(os.path.join(out, "imagesTr"))
                   if f.startswith("BRATS_") and f.endswith(".nii.gz") and ".tmp." not in f)
    training = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in names]
    data = {"name": "BRATS", "description": "LesionFactorizer synthetic tumor phantoms (MSD Task01 layout)",
            "tensorImageSize": "4D", "modality": {str(k): m for k, m in enumerate(MODALITIES)},
            "labels": LABELS, "numTraining": len(training), "numTest": 0, "training": training, "test": []}
    path = os.path.join(out, "dataset.json")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.replace(path + ".tmp", path)
