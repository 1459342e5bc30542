"""Irregular soft blobs (noise-perturbed ellipsoids) rasterised on the template box grid."""

from __future__ import annotations

import numpy as np

from LesionFactorizerLib.phantoms.fields import SmoothField, box_coords, smoothstep


def local_box(centre, reach, shape) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Integer sub-box (lo, size) around ``centre`` with half-width ``reach`` mm, clipped to ``shape``."""
    lo = [max(int(np.floor(c - reach)), 0) for c in centre]
    hi = [min(int(np.ceil(c + reach)) + 1, n) for c, n in zip(centre, shape)]
    return tuple(lo), tuple(max(h - l, 1) for l, h in zip(lo, hi))  # type: ignore[return-value]


def ellipsoid_phi(coords: np.ndarray, centre, radii, rotation: np.ndarray) -> np.ndarray:
    """Normalised ellipsoidal distance: 1 on the surface of the ellipsoid, 0 at its centre."""
    d = coords - np.asarray(centre, np.float32).reshape(3, 1, 1, 1)
    local = np.tensordot(rotation.T.astype(np.float32), d, axes=1)
    r = np.asarray(radii, np.float32).reshape(3, 1, 1, 1)
    return np.sqrt(((local / r) ** 2).sum(0))


def paint_blob(
    target: np.ndarray,
    rng: np.random.Generator,
    centre,
    radii,
    rotation: np.ndarray,
    roughness: float = 0.15,
    edge_mm: float = 0.8,
    weight: np.ndarray | None = None,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Draw a rough soft ellipsoid into ``target`` (max-combined); returns its slices and soft map.

    ``roughness`` perturbs the surface by a smooth field with a correlation length of about half
    the smallest radius, so lesions are lumpy rather than geometric. ``weight`` (a callable-free
    array on the whole box) multiplies the blob, e.g. to keep it in white matter.
    """
    reach = max(radii) * (1.0 + 2.5 * roughness) + 3 * edge_mm
    lo, size = local_box(centre, reach, target.shape)
    coords = box_coords(lo, size)
    phi = ellipsoid_phi(coords, centre, radii, rotation)
    if roughness > 0:
        field = SmoothField(rng, lo, np.asarray(lo) + np.asarray(size), max(min(radii) * 0.8, 1.5))
        phi = phi + roughness * field.at(coords)
    soft = smoothstep((1.0 - phi) * min(radii), edge_mm)
    sl = tuple(slice(l, l + s) for l, s in zip(lo, size))
    if weight is not None:
        soft = soft * weight[sl]
    np.maximum(target[sl], soft, out=target[sl])
    return sl, soft
