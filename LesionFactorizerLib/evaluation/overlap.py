"""Voxel-overlap and surface-distance metrics on binary masks (numpy arrays, any shape ≥ 1-D).

Spacing is given in the array's axis order (for a SimpleITK array that is the image spacing
reversed). See the package docstring for the empty-mask conventions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def _binary(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient; both empty → 1.0, exactly one empty → 0.0."""
    p, r = _binary(pred), _binary(ref)
    if p.shape != r.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {r.shape}")
    denom = int(p.sum()) + int(r.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    # Mask minus its erosion by the face-connected cross; border_value=0 makes the image border
    # count as outside, which is what MONAI's crop-with-margin-then-erode does.
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every surface voxel of ``pred`` to ``ref``'s surface, and back.

    Both masks must be non-empty."""
    p, r = _binary(pred), _binary(ref)
    if p.shape != r.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {r.shape}")
    if not p.any() or not r.any():
        raise ValueError("surface distances need two non-empty masks")
    spacing = np.ones(p.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    # Work inside the union's bounding box (+1 voxel) — distances between surfaces are unchanged
    # and the distance transforms get much smaller on whole-brain volumes.
    idx = np.nonzero(p | r)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    sp, sr = _surface(p), _surface(r)
    sp, sr = sp[box], sr[box]
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return to_ref[sp], to_pred[sr]


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    spacing = np.ones(len(shape)) if spacing is None else np.asarray(spacing, dtype=float)
    return float(np.sqrt(np.sum((np.asarray(shape) * spacing) ** 2)))


# The BraTS challenges' score for a region that exactly one of prediction and reference lacks: the
# diagonal of their 240 × 240 × 155 grid of 1 mm voxels, √(240² + 240² + 155²) mm.
BRATS_EMPTY_HD95 = 373.12866

# ``empty_value`` choices by name; a number is used as given.
HD95_EMPTY = ("nan", "diagonal", "brats")


def hausdorff95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
                percentile: float = 95.0, empty_value: float | str = float("nan")) -> float:
    """Symmetric percentile Hausdorff distance in mm (max of the two directed percentiles).

    Both empty → 0. One empty → ``empty_value``: NaN by default (MONAI's convention, excluded from
    means); ``"diagonal"`` = this image's diagonal in mm; ``"brats"`` = 373.13 mm, what the BraTS
    challenge evaluation scores (:data:`BRATS_EMPTY_HD95`)."""
    p, r = _binary(pred), _binary(ref)
    if p.shape != r.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {r.shape}")
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return 0.0
    if not has_p or not has_r:
        if empty_value == "diagonal":
            return image_diagonal(p.shape, spacing)
        if empty_value == "brats":
            return BRATS_EMPTY_HD95
        return float(empty_value)
    d_pr, d_rp = surface_distances(p, r, spacing)
    return float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))
