"""The BraTS challenge convention: the official ``brats-evaluation`` package's numbers per region.

That package (BraTS_evaluation 0.0.10, built on panoptica 2.1) scores each region (tumor: ET, TC,
WT) of a case as follows, and :func:`brats_region` reproduces it:

* *global Dice* ``2|P∩R| / (|P|+|R|)``; a region empty in both → NaN (left out of the means);
* *global HD95*: the 95th percentile (linear interpolation) of **one** set — the distances from
  every surface voxel of each mask to the other mask's surface, both directions pooled (MONAI
  takes the larger of the two directed percentiles instead). Surfaces are the mask minus its
  face-connected erosion, the image border counting as outside. A region empty on exactly one
  side → 373 (the package's parser replaces its infinity by the diameter of the 240×240×155 SRI
  grid, an integer); empty in both → NaN;
* *lesion-wise*: lesions are 26-connected components of each mask; prediction and reference
  lesions are paired one-to-one by maximum bipartite matching on Dice (any overlap may pair).
  ``tp`` / ``fp`` / ``fn`` count paired reference lesions, unpaired predicted ones and unpaired
  reference ones; lesion F1 = tp / (tp + (fp + fn) / 2); lesion-wise Dice and HD95 are the means
  over the pairs — with no pair, Dice 0 and HD95 infinite (the package reports ``inf`` there, not
  373); with no lesion on either side all four are NaN.

**The one documented difference**: the package measures distances in voxels, whatever the
spacing in the image header. Here they are in millimetres (the reference image's spacing), which
is the same on BraTS's 1 mm grid; on another grid HD95 differs (e.g. 1×1×3 mm), and the
evaluation output says so.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from LesionFactorizerLib.evaluation.overlap import surface_distances

BRATS_MISSING_HD95 = 373.0   # the package's stand-in for an infinite global HD95 (SRI grid diameter)
SPACING_NOTE = ("the official package measures HD95 in voxels and ignores the voxel spacing; here it is in mm "
                "(equal on BraTS's 1 mm grid)")


def pooled_hd95(p: np.ndarray, r: np.ndarray, spacing: Sequence[float] | None) -> float:
    """95th percentile of both directions' surface distances pooled (two non-empty masks)."""
    d_pr, d_rp = surface_distances(p, r, spacing)
    return float(np.percentile(np.hstack((d_pr, d_rp)), 95))


def _dice(p: np.ndarray, r: np.ndarray) -> float:
    total = int(p.sum()) + int(r.sum())
    return float("nan") if total == 0 else 2.0 * int(np.count_nonzero(p & r)) / total


def lesion_pairs(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int, list]:
    """26-connected lesions of both masks and their one-to-one pairing of maximal total Dice:
    (pred labels, ref labels, pred count, ref count, [(pred id, ref id, dice), ...])."""
    from scipy.optimize import linear_sum_assignment

    full = np.ones((3,) * p.ndim, bool)
    lp, n_p = ndimage.label(p, structure=full)
    lr, n_r = ndimage.label(r, structure=full)
    if not n_p or not n_r:
        return lp, lr, n_p, n_r, []
    sizes_p = np.bincount(lp.ravel(), minlength=n_p + 1)
    sizes_r = np.bincount(lr.ravel(), minlength=n_r + 1)
    both = (lp > 0) & (lr > 0)
    overlap = np.zeros((n_r + 1, n_p + 1), np.int64)
    np.add.at(overlap, (lr[both], lp[both]), 1)
    dice = 2.0 * overlap[1:, 1:] / (sizes_r[1:, None] + sizes_p[None, 1:])
    # unpaired costs more than any overlap (as the package builds its cost matrix)
    cost = np.where(dice > 1e-6, 1.0 - dice, 1.0 + 1e-6)
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(c) + 1, int(rw) + 1, float(dice[rw, c])) for rw, c in zip(rows, cols) if dice[rw, c] > 1e-6]
    return lp, lr, n_p, n_r, pairs


def brats_region(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """The package's scores of one region (boolean masks): ``dice``, ``hd95``, ``lesion_tp``,
    ``lesion_fp``, ``lesion_fn``, ``lesion_f1``, ``lesionwise_dice``, ``lesionwise_hd95``,
    ``n_ref_lesions``, ``n_pred_lesions``."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    has_p, has_r = bool(p.any()), bool(r.any())
    nan = float("nan")
    out = {"dice": _dice(p, r)}
    if has_p and has_r:
        out["hd95"] = pooled_hd95(p, r, spacing)
    else:
        out["hd95"] = BRATS_MISSING_HD95 if has_p or has_r else nan
    lp, lr, n_p, n_r, pairs = lesion_pairs(p, r)
    tp = len(pairs)
    fp, fn = n_p - tp, n_r - tp
    out.update(n_ref_lesions=float(n_r), n_pred_lesions=float(n_p), lesion_tp=float(tp), lesion_fp=float(fp),
               lesion_fn=float(fn))
    if not n_p and not n_r:
        out.update(lesion_f1=nan, lesionwise_dice=nan, lesionwise_hd95=nan)
        return out
    out["lesion_f1"] = tp / (tp + 0.5 * (fp + fn))
    if not tp:
        out.update(lesionwise_dice=0.0, lesionwise_hd95=math.inf)
        return out
    out["lesionwise_dice"] = float(np.mean([d for _, _, d in pairs]))
    out["lesionwise_hd95"] = float(np.mean([pooled_hd95(lp == a, lr == b, spacing) for a, b, _ in pairs]))
    return out


def brats_row(pred: np.ndarray, ref: np.ndarray, regions: dict, spacing: Sequence[float] | None) -> dict[str, float]:
    """One case's row: every region's scores as ``<score>_<region>`` columns."""
    row: dict[str, float] = {}
    for name, values in regions.items():
        for key, value in brats_region(np.isin(pred, values), np.isin(ref, values), spacing).items():
            row[f"{key}_{name}"] = value
    return row
