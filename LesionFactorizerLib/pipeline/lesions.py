"""What a lesion is: a connected component of a mask, with the small-lesion rule (MSSEG-2's
"lesions smaller than 3 mm³", as animaSegPerfAnalyzer applies it).

The one lesion definition of the library: the inference post-processing (small-lesion removal, the
per-lesion table) and the evaluation's detection metrics (``evaluation/lesions.py``) both use it, so
a lesion the report lists is a lesion the evaluation counts. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

# 3-D neighbourhoods → scipy's structure "rank" (6: faces, 18: + edges, 26: + corners).
CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


def connectivity_structure(connectivity: int) -> np.ndarray:
    """The 3×3×3 neighbourhood that makes two lesion voxels touch."""
    if connectivity not in CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])


@dataclass(frozen=True)
class Lesions:
    """Connected lesions of a mask: ``labels`` numbers them 1..count by decreasing size."""

    labels: np.ndarray   # int32, 0 = background or a removed (too small) component
    count: int
    removed: int         # components dropped as smaller than the minimum volume


def max_removed_voxels(min_volume_mm3: float, spacing: Sequence[float] | None = None) -> int:
    """Largest component (in voxels) the small-lesion rule removes: ⌊min_volume_mm3 / voxel volume⌋,
    as animaSegPerfAnalyzer (MSSEG-2) does — a component is kept when it has *more* voxels than
    that, so at 1 mm a 3-voxel lesion is dropped and a 4-voxel one kept. The relative slack keeps
    e.g. 3 mm³ / 0.001 mm³ from rounding below 3000."""
    if min_volume_mm3 <= 0:
        return 0
    voxel_volume = float(np.prod(spacing)) if spacing is not None else 1.0
    return int(math.floor(min_volume_mm3 / voxel_volume * (1.0 + 1e-9)))


def find_lesions(mask: np.ndarray, spacing: Sequence[float] | None = None, connectivity: int = 18,
                 min_volume_mm3: float = 3.0) -> Lesions:
    """Connected components of ``mask``; those of at most :func:`max_removed_voxels` voxels are
    removed (the MSSEG-2 evaluation's rule for "lesions smaller than 3 mm³").

    The one lesion definition of the library: the inference post-processing (small-lesion
    removal, per-lesion table) and the detection metrics both use it, so a lesion the report lists
    is a lesion the evaluation counts. ``spacing`` in mm (any axis order); None means 1 mm voxels.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 3:
        raise ValueError(f"lesion labelling needs a 3-D mask, got {m.ndim}-D")
    labels, n = ndimage.label(m, structure=connectivity_structure(connectivity))
    labels = labels.astype(np.int32, copy=False)
    if n == 0:
        return Lesions(labels, 0, 0)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = np.flatnonzero(sizes > max_removed_voxels(min_volume_mm3, spacing))
    keep = keep[np.argsort(-sizes[keep], kind="stable")]
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep + 1] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return Lesions(lut[labels], int(len(keep)), int(n - len(keep)))


def label_lesions(mask: np.ndarray, spacing: Sequence[float] | None = None, connectivity: int = 18,
                  min_volume_mm3: float = 3.0) -> tuple[np.ndarray, int]:
    """(labels, count) of :func:`find_lesions`."""
    found = find_lesions(mask, spacing, connectivity, min_volume_mm3)
    return found.labels, found.count
