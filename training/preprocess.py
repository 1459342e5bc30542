"""Case files → normalised arrays, the deterministic part of the training data path.

Mirrors the inference path of DESIGN.md §3 (and thesis 6.4.1 / 7.4.2): every input is put on the
first input's grid in physical space (linear), the label with nearest neighbour; optionally all
are resampled to the model's spacing; then the volume is cropped to the non-zero box of the
inputs and each channel is z-scored over its non-zero voxels (zeros stay zero, like MONAI's
``NormalizeIntensity(nonzero=True, channel_wise=True)``).

Arrays are channel-first in SimpleITK's (z, y, x) order; spacings in configs are (x, y, z) mm.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.pipeline.preprocessing import foreground_box as pipeline_box
from LesionFactorizerLib.pipeline.preprocessing import zscore_nonzero as pipeline_zscore

from .datasets import Case, ImageRef, convert_labels


def read_input(ref: ImageRef) -> sitk.Image:
    try:
        img = sitk.ReadImage(ref.path)
    except RuntimeError as exc:
        raise UserError(f"cannot read {ref.path}: {str(exc).strip().splitlines()[-1]}") from None
    if ref.channel is not None:
        if img.GetDimension() == 4:
            size = list(img.GetSize())
            if ref.channel >= size[3]:
                raise UserError(f"{ref.path} has {size[3]} volumes; channel {ref.channel} requested")
            img = sitk.Extract(img, size[:3] + [0], [0, 0, 0, ref.channel])
        elif img.GetNumberOfComponentsPerPixel() > 1:
            img = sitk.VectorIndexSelectionCast(img, ref.channel)
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{ref.path} is not a 3-D scalar image")
    return sitk.Cast(img, sitk.sitkFloat32)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def _onto(img: sitk.Image, ref: sitk.Image, interp) -> sitk.Image:
    return img if _same_grid(img, ref) else sitk.Resample(img, ref, sitk.Transform(), interp, 0.0)


def _respace(img: sitk.Image, spacing, interp) -> sitk.Image:
    spacing = [float(s) for s in spacing]
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing)]
    return sitk.Resample(img, size, sitk.Transform(), interp, img.GetOrigin(), spacing, img.GetDirection(),
                         0.0, img.GetPixelID())


def foreground_box(image: np.ndarray) -> tuple[slice, ...]:
    """(z, y, x) slices of the box of voxels non-zero in any channel of a (C, z, y, x) array —
    the inference pipeline's box, so training and inference crop alike."""
    start, stop = pipeline_box(list(image))      # (i, j, k) order
    return tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1]))


def zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """Channel-wise z-score over non-zero voxels with the inference pipeline's own function."""
    out = np.array(image, dtype=np.float32, copy=True)
    for c in range(out.shape[0]):
        pipeline_zscore(out[c])
    return out


def load_case(case: Case, input_names: list[str], spacing=None, with_label: bool = True) -> dict:
    """{"image": float32 (C, z, y, x), "label": uint8 (1, z, y, x) | None, "id", "spacing"}."""
    missing = [n for n in input_names if n not in case.images]
    if missing:
        raise UserError(f"case {case.id} lacks input(s) {missing}")
    imgs = [read_input(case.images[n]) for n in input_names]
    ref = imgs[0]
    imgs = [ref] + [_onto(im, ref, sitk.sitkLinear) for im in imgs[1:]]
    lab = None
    if with_label and case.label:
        try:
            lab = sitk.ReadImage(case.label)
        except RuntimeError as exc:
            raise UserError(f"cannot read label {case.label}: {str(exc).strip().splitlines()[-1]}") from None
        if lab.GetDimension() != 3:
            raise UserError(f"label {case.label} is not 3-D")
        lab = _onto(lab, ref, sitk.sitkNearestNeighbor)
    if spacing is not None:
        imgs = [_respace(im, spacing, sitk.sitkLinear) for im in imgs]
        if lab is not None:
            lab = _onto(lab, imgs[0], sitk.sitkNearestNeighbor)
    image = np.stack([sitk.GetArrayFromImage(im) for im in imgs]).astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise UserError(f"case {case.id}: an input contains NaN or infinite values")
    box = (slice(None),) + foreground_box(image)
    image = zscore_nonzero(image[box])
    label = None
    if lab is not None:
        label = convert_labels(sitk.GetArrayFromImage(lab), case.label_map, case.label)[None][box]
    return {"id": case.id, "image": np.ascontiguousarray(image),
            "label": None if label is None else np.ascontiguousarray(label),
            "spacing": tuple(imgs[0].GetSpacing())}
