"""Tiny synthetic data sets in the public layouts, for tests and quick training smoke runs.

Not realistic anatomy (that is ``LesionFactorizerLib.phantoms``): a noisy ellipsoidal "brain"
with ellipsoidal lesions whose contrast differs per input, written exactly where each public
layout keeps its files and with that layout's raw label values, so the adapters, the label
conversion and the whole training loop can be exercised end to end in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LesionFactorizerLib.datasets import (BRATS_2021, BRATS_2023, MSD_TASK01_LABELS, brats_files, isles22_files,
                                          msseg2_files, raw_labels)


def _ellipsoid(shape, center, radii):
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1.0


def _volume(rng, shape):
    brain = _ellipsoid(shape, [n / 2 for n in shape], [n * 0.42 for n in shape])
    return brain


def _write(arr: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0), dtype=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr.astype(dtype) if dtype else arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(img, str(path), useCompression=True)


def tumor_case(rng, shape=(32, 32, 32)):
    """Images (flair, t1, t1ce, t2) and task labels (1 NCR, 2 ED, 3 ET; 0 background)."""
    brain = _volume(rng, shape)
    c = [rng.uniform(n * 0.35, n * 0.65) for n in shape]
    r = rng.uniform(4, 7)
    wt = _ellipsoid(shape, c, [r * rng.uniform(0.8, 1.2) for _ in range(3)]) & brain
    tc = _ellipsoid(shape, c, [r * 0.6] * 3) & wt
    ncr = _ellipsoid(shape, c, [r * 0.3] * 3) & tc
    lab = np.zeros(shape, np.uint8)
    lab[wt] = 2
    lab[tc] = 3
    lab[ncr] = 1
    base = brain * 1.0
    noise = lambda: rng.normal(0, 0.08, shape)  # noqa: E731
    flair = base + 1.0 * wt + noise()
    t1 = base - 0.3 * tc + noise()
    t1ce = base + 1.2 * (lab == 3) - 0.4 * ncr + noise()
    t2 = base + 0.8 * wt + 0.3 * ncr + noise()
    imgs = {k: (np.clip(v, 0, None) * 300 * brain).astype(np.float32)
            for k, v in dict(flair=flair, t1=t1, t1ce=t1ce, t2=t2).items()}
    return imgs, lab


def lesion_case(rng, shape=(32, 32, 32), n_lesions=None):
    """(brain, lesion mask) with 0–3 small ellipsoidal lesions inside the brain."""
    brain = _volume(rng, shape)
    n = int(rng.integers(1, 4)) if n_lesions is None else n_lesions
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = [rng.uniform(n_ * 0.3, n_ * 0.7) for n_ in shape]
        m |= _ellipsoid(shape, c, [rng.uniform(1.5, 4) for _ in range(3)])
    return brain, m & brain


def make_brats(out: str | Path, n: int = 4, version: int = 2021, shape=(32, 32, 32), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(out)
    release = BRATS_2021 if version < 2023 else BRATS_2023
    for i in range(n):
        cid = f"BraTS{version}_{i:05d}" if version < 2023 else f"BraTS-GLI-{i:05d}-000"
        imgs, lab = tumor_case(rng, shape)
        files = brats_files(cid, release)
        for k in release.suffixes:
            _write(imgs[k], out / f"{files[k]}.nii.gz")
        _write(raw_labels(lab, release.labels), out / f"{files['label']}.nii.gz", dtype=np.uint8)
    return out


def make_msd_task01(out: str | Path, n: int = 4, shape=(32, 32, 32), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(out)
    training = []
    for i in range(n):
        imgs, lab = tumor_case(rng, shape)
        raw = raw_labels(lab, MSD_TASK01_LABELS)  # MSD: 1 edema, 2 non-enhancing/necrotic, 3 enhancing
        four_d = np.stack([imgs[k] for k in ("flair", "t1", "t1ce", "t2")])  # (C, z, y, x)
        (out / "imagesTr").mkdir(parents=True, exist_ok=True)
        img = sitk.JoinSeries([sitk.GetImageFromArray(v) for v in four_d])
        sitk.WriteImage(img, str(out / "imagesTr" / f"BRATS_{i:03d}.nii.gz"), useCompression=True)
        _write(raw, out / "labelsTr" / f"BRATS_{i:03d}.nii.gz", dtype=np.uint8)
        training.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})
    (out / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": n, "training": training}, indent=1), encoding="utf-8")
    return out


def make_isles22(out: str | Path, n: int = 4, shape=(32, 32, 32), seed: int = 0, spacing=(2.0, 2.0, 2.0)) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(out)
    for i in range(n):
        sub, ses = f"sub-strokecase{i + 1:04d}", "ses-0001"
        brain, m = lesion_case(rng, shape)
        dwi = brain * 400 + m * 500 + rng.normal(0, 20, shape) * brain
        adc = brain * 900 - m * 450 + rng.normal(0, 30, shape) * brain
        flair = brain * 300 + m * 80 + rng.normal(0, 15, shape) * brain
        files = {k: out / f"{v}.nii.gz" for k, v in isles22_files(sub, ses).items()}
        for k, v in (("dwi", dwi), ("adc", adc), ("flair", flair)):
            _write(np.clip(v, 0, None).astype(np.float32), files[k], spacing)
        _write(m.astype(np.uint8), files["label"], spacing)
    return out


def make_msseg2(out: str | Path, n: int = 4, shape=(32, 32, 32), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(out)
    for i in range(n):
        brain, old = lesion_case(rng, shape)
        _, new = lesion_case(rng, shape, n_lesions=0 if i % 4 == 3 else None)  # some cases: no new lesion
        new &= ~old
        t1 = brain * 300 + old * 200 + rng.normal(0, 15, shape) * brain
        t2 = brain * 320 + (old | new) * 200 + rng.normal(0, 15, shape) * brain
        files = {k: out / f"{v}.nii.gz" for k, v in msseg2_files(f"{i:03d}").items()}
        _write(np.clip(t1, 0, None).astype(np.float32), files["flair_baseline"])
        _write(np.clip(t2, 0, None).astype(np.float32), files["flair_followup"])
        _write(new.astype(np.uint8), files["label"])
    return out


MAKERS = {"brats": make_brats, "msd-task01": make_msd_task01, "isles22": make_isles22, "msseg2": make_msseg2}
