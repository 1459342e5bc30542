"""Test data for the pipeline tests: analytic phantoms sampled on arbitrary grids, tiny model files.

An analytic phantom (a head-sized ellipsoid with mild texture and one bright spherical lesion at a
known physical point) can be sampled on any grid — oblique, anisotropic, RAS or LPS — so every
geometry claim is checked against physical ground truth, not against another grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from LesionFactorizerLib.pipeline.geometry import Geometry

LESION_CENTER = np.array([4.0, -6.0, 3.0])   # mm, LPS
LESION_RADIUS = 5.0
HEAD_RADII = np.array([26.0, 30.0, 20.0])


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def phantom_values(points: np.ndarray, lesion: bool = True, seed: int = 0) -> np.ndarray:
    """Intensity at physical points (…, 3): 0 outside the head, ~100 ± texture inside, 400 in the lesion."""
    inside = (((points / HEAD_RADII) ** 2).sum(-1)) <= 1.0
    texture = 100.0 + 6.0 * np.sin(points[..., 0] / 3.1) * np.cos(points[..., 1] / 4.3) + 3.0 * np.sin(points[..., 2] / 2.2)
    values = np.where(inside, texture, 0.0)
    if lesion:
        in_lesion = np.linalg.norm(points - LESION_CENTER, axis=-1) <= LESION_RADIUS
        values = np.where(in_lesion & inside, 400.0, values)
    return values.astype(np.float32)


def sample(geometry: Geometry, lesion: bool = True) -> sitk.Image:
    """The phantom sampled at the voxel centres of ``geometry``."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in geometry.shape), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    points = geometry.index_to_physical(index)
    return geometry.to_image(phantom_values(points, lesion))


def grid(size, spacing, direction=np.eye(3), center=(0.0, 0.0, 0.0)) -> Geometry:
    """A grid of ``size`` voxels whose centre sits at physical ``center``."""
    d = np.asarray(direction, dtype=float)
    half = (np.asarray(size) - 1) / 2.0 * np.asarray(spacing)
    origin = np.asarray(center) - d @ half
    return Geometry(tuple(int(s) for s in size), tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                    tuple(float(v) for v in d.ravel()))


def save_threshold_model(path, task: str = "stroke", in_channels: int = 2, out_channels: int = 1, channel: int = 0,
                         threshold: float = 3.0, spacing=None, patch=(32, 32, 32), delay_s: float = 0.0,
                         inputs=None, **metadata) -> str:
    """A model file for the deterministic threshold network (labels voxels with z-score > threshold)."""
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file
    from LesionFactorizerLib.presets import build_architecture

    model = build_architecture("threshold-net", {"in_channels": in_channels, "out_channels": out_channels,
                                                 "channel": channel, "threshold": threshold, "delay_s": delay_s})
    meta = make_metadata(task, model.config, name="threshold", patch_size=patch, spacing=spacing, inputs=inputs,
                         description="diagnostic threshold network", **metadata)
    save_model_file(path, model, meta)
    return str(path)


def write_case(folder, names=("dwi", "adc"), size=(36, 40, 24), spacing=(1.6, 1.6, 2.5), ext=".nii.gz") -> dict:
    """One axis-aligned case with every input sampled from the phantom; returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    geom = grid(size, spacing)
    image = sample(geom)
    paths = {}
    for name in names:
        path = folder / f"{name}{ext}"
        sitk.WriteImage(image, str(path))
        paths[name] = str(path)
    return paths


def test_phantom_lesion_is_where_it_is_said_to_be():
    geom = grid((30, 30, 30), (1.0, 1.0, 1.0), rotation(2, 30))
    array = sitk.GetArrayFromImage(sample(geom))
    k, j, i = np.nonzero(array == 400.0)
    centroid = geom.index_to_physical(np.stack([i, j, k], axis=-1).mean(axis=0))
    assert np.linalg.norm(centroid - LESION_CENTER) < 0.3
