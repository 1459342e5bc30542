"""From checked inputs on the reference grid to the network's input array, and back.

Order: foreground box on the reference grid → the same box on the model grid (reference extent
at the model's spacing) → resample only that box (linear) → channel-wise z-score on non-zero
voxels → zero-pad to a multiple of the network stride. The box start is aligned to the
network stride so every layer's grid inside the box coincides with that layer's grid over the
whole volume: component maps can then be pasted into full-extent layer grids without
interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from LesionFactorizerLib.pipeline.geometry import Geometry


@dataclass
class Prepared:
    array: np.ndarray               # (C, k, j, i) float32: normalised, cropped, padded
    reference: Geometry             # grid of the inputs and of every output label map
    model_grid: Geometry            # reference extent at the model spacing
    crop_start: tuple[int, int, int]  # (i, j, k) index of the box in model_grid
    crop_size: tuple[int, int, int]   # unpadded box size (i, j, k), inside model_grid
    padded_size: tuple[int, int, int]
    identity: bool                  # model_grid is the reference grid (no interpolation)
    normalization: list[dict]      # per channel: the statistics it was normalised with

    @property
    def crop_geometry(self) -> Geometry:
        return self.model_grid.subgrid(self.crop_start, self.crop_size)


def foreground_box(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(start, stop) in (i, j, k) of the voxels that are non-zero in any channel."""
    mask = np.zeros(arrays[0].shape, dtype=bool)
    for a in arrays:
        mask |= a != 0
    if not mask.any():
        shape = np.array(arrays[0].shape[::-1])
        return np.zeros(3, int), shape
    start, stop = [], []
    for axis in range(3):   # numpy axes k, j, i
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        start.append(hit[0])
        stop.append(hit[-1] + 1)
    return np.array(start[::-1]), np.array(stop[::-1])


def zscore_nonzero(array: np.ndarray) -> dict:
    """In place, on one channel: voxels that are zero stay zero (background after skull stripping)."""
    mask = array != 0
    values = array[mask]
    if values.size == 0:
        return {"mean": 0.0, "std": 1.0, "nonzero_voxels": 0}
    mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    std = std if std > 1e-8 else 1.0
    array[mask] = (values - mean) / std
    return {"mean": mean, "std": std, "nonzero_voxels": int(values.size)}


def prepare(images: list, reference: Geometry, spacing: list[float] | None, align: int,
            crop_foreground: bool = True, normalization: str = "zscore-nonzero") -> Prepared:
    """``images``: SimpleITK images already on the ``reference`` grid, in model input order."""
    import SimpleITK as sitk

    if spacing is None or np.allclose(spacing, reference.spacing, rtol=1e-3, atol=1e-4):
        model_grid, identity = reference, True
    else:
        model_grid, identity = reference.with_spacing(spacing), False

    views = [sitk.GetArrayViewFromImage(im) for im in images]
    if crop_foreground:
        start_ref, stop_ref = foreground_box(views)
    else:
        start_ref, stop_ref = np.zeros(3, int), np.array(reference.size)
    if identity:
        start, stop = start_ref, stop_ref
    else:
        corners = np.array([[(stop_ref if b else start_ref)[a] - 0.5 for a, b in enumerate(bits)]
                            for bits in np.ndindex(2, 2, 2)], dtype=float)
        idx = model_grid.physical_to_index(reference.index_to_physical(corners))
        start = np.clip(np.floor(idx.min(axis=0) + 0.5).astype(int), 0, np.array(model_grid.size) - 1)
        stop = np.clip(np.ceil(idx.max(axis=0) + 0.5).astype(int), start + 1, np.array(model_grid.size))
    start = (start // align) * align
    size = stop - start
    padded = np.array([math.ceil(n / align) * align for n in size])
    crop = model_grid.subgrid(start, size)

    channels = np.zeros((len(images), *padded[::-1]), dtype=np.float32)
    stats = []
    for c, image in enumerate(images):
        if identity:
            (i0, j0, k0), (i1, j1, k1) = start, start + size
            block = np.array(views[c][k0:k1, j0:j1, i0:i1], dtype=np.float32)
        else:
            out = sitk.Resample(image, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear, crop.origin,
                                crop.spacing, crop.direction, 0.0, sitk.sitkFloat32)
            block = sitk.GetArrayFromImage(out)
        if normalization != "zscore-nonzero":   # the one method spec.NORMALIZATIONS lists
            raise ValueError(f"unknown normalization {normalization!r}")
        stats.append(zscore_nonzero(block))
        channels[c, : block.shape[0], : block.shape[1], : block.shape[2]] = block
    return Prepared(channels, reference, model_grid, tuple(int(s) for s in start), tuple(int(s) for s in size),
                    tuple(int(s) for s in padded), identity, stats)


def to_reference(prep: Prepared, maps: np.ndarray, fill: list[float]) -> np.ndarray:
    """Maps ``(C, k, j, i)`` on the padded box → ``(C, K, J, I)`` on the reference grid.

    Outside the box each channel is ``fill[c]`` (e.g. probability 1 for a softmax background).
    Off-grid (model spacing ≠ input spacing) maps are resampled linearly in physical space.
    """
    import SimpleITK as sitk

    si, sj, sk = prep.crop_size
    out = np.empty((maps.shape[0], *prep.reference.shape), dtype=np.float32)
    for c in range(maps.shape[0]):
        block = np.ascontiguousarray(maps[c, :sk, :sj, :si], dtype=np.float32)
        if prep.identity:
            out[c].fill(fill[c])
            (i0, j0, k0) = prep.crop_start
            out[c, k0:k0 + sk, j0:j0 + sj, i0:i0 + si] = block
        else:
            image = prep.crop_geometry.to_image(block)
            ref = sitk.Image(*prep.reference.size, sitk.sitkUInt8)
            prep.reference.apply(ref)
            res = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, float(fill[c]), sitk.sitkFloat32)
            out[c] = sitk.GetArrayViewFromImage(res)
    return out
