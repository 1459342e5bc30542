"""The bundled sample cases (Resources/SampleData): where they are, checking them, rebuilding them.

One phantom per task, cropped to the brain, int16 images and uint8 labels in the product's label
convention (tumour: 1 NCR, 2 ED, 3 ET), each file a gzip NIfTI of a few MB at most, listed in
``manifest.json`` with SHA-256 checksums. Torch-free: the Slicer module and ``demo`` read this.
"""

from __future__ import annotations

import json
import os

import numpy as np

from LesionFactorizerLib.core.checksums import sha256
from LesionFactorizerLib.core.errors import UserError

MANIFEST_NAME = "manifest.json"
# Cases picked from the generator for showing each task well (medium lesions, clear contrast).
SAMPLE_SEEDS = {"tumor": 0, "stroke": 13, "ms-new": 1}
_SAMPLE_P99 = 400.0


def sample_data_dir() -> str:
    """Resources/SampleData: installed package data (a wheel), else the source tree's (the extension
    layout keeps it beside the Lib)."""
    lib = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = os.path.join(lib, "Resources", "SampleData")
    if os.path.isfile(os.path.join(installed, MANIFEST_NAME)):
        return installed
    return os.path.normpath(os.path.join(lib, "..", "Resources", "SampleData"))


def load_manifest(folder: str | None = None) -> dict:
    folder = folder or sample_data_dir()
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.exists(path):
        raise UserError(f"sample data manifest not found at {path}; rebuild it with build_sample_data()")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sample_case(task: str, folder: str | None = None, verify: bool = True) -> dict:
    """Absolute paths of one task's sample: {"inputs": {name: path}, "label": path, "labels": {...}}."""
    folder = folder or sample_data_dir()
    manifest = load_manifest(folder)
    if task not in manifest["cases"]:
        raise UserError(f"no sample case for task {task!r}; available: {', '.join(manifest['cases'])}")
    entry = manifest["cases"][task]
    out = {"inputs": {k: os.path.join(folder, v) for k, v in entry["inputs"].items()},
           "label": os.path.join(folder, entry["label"]), "labels": entry["labels"]}
    if verify:
        for rel, digest in entry["sha256"].items():
            path = os.path.join(folder, rel)
            if not os.path.exists(path) or sha256(path) != digest:
                raise UserError(f"sample file {path} is missing or corrupted; restore it from the repository")
    return out


def build_sample_data(folder: str | None = None) -> dict:
    """Regenerate the sample cases and manifest (deterministic)."""
    from LesionFactorizerLib.phantoms.generate import LABELS, generate_case
    from LesionFactorizerLib.phantoms.layouts import write_nifti

    folder = folder or sample_data_dir()
    os.makedirs(folder, exist_ok=True)
    cases = {}
    for task, seed in SAMPLE_SEEDS.items():
        case = generate_case(task, seed, 0)
        nonzero = np.zeros(case.label.shape, bool)
        for img in case.images.values():
            nonzero |= img != 0
        idx = np.argwhere(nonzero)
        lo = np.maximum(idx.min(0) - 2, 0)
        hi = np.minimum(idx.max(0) + 3, nonzero.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        geom = dict(case.geometry)
        d = np.array(geom["direction"]).reshape(3, 3)
        shift = d @ (np.array(lo[::-1], float) * np.array(geom["spacing"]))
        geom["origin"] = tuple(float(o + s) for o, s in zip(geom["origin"], shift))
        entry = {"inputs": {}, "label": f"{task}_label.nii.gz", "seed": seed,
                 "labels": {str(k): v for k, v in LABELS[task].items()}, "sha256": {}}
        for name, img in case.images.items():
            rel = f"{task}_{name}.nii.gz"
            img = img[box].astype(np.float32)
            if name != "adc":  # arbitrary units: a smaller range keeps the noisy files small
                img *= min(1.0, _SAMPLE_P99 / max(float(np.percentile(img[img > 0], 99)), 1.0))
            write_nifti(np.ascontiguousarray(np.rint(img)).astype(np.int16), geom, os.path.join(folder, rel))
            entry["inputs"][name] = rel
        write_nifti(np.ascontiguousarray(case.label[box]).astype(np.uint8), geom, os.path.join(folder, entry["label"]))
        for rel in list(entry["inputs"].values()) + [entry["label"]]:
            entry["sha256"][rel] = sha256(os.path.join(folder, rel))
        entry["parameters"] = {k: v for k, v in case.meta.items() if k != "seconds"}
        cases[task] = entry
    manifest = {
        "description": "Synthetic phantoms made by `lesion-factorizer phantom` (LesionFactorizerLib.phantoms) on the "
        "MNI ICBM152 2009a anatomy. Not patient data; for demonstration and tests only.",
        "cases": cases,
    }
    with open(os.path.join(folder, MANIFEST_NAME), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
    return manifest
