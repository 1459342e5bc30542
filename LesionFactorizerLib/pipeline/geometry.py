"""Image grids in physical space (ITK/LPS convention) and the maps between them.

A :class:`Geometry` travels with every array of the pipeline, so no stage has to guess where its
voxels are. Sizes, spacings and indices are in ITK axis order (i, j, k); numpy arrays from
SimpleITK are indexed ``[k, j, i]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]   # 3×3 row-major; column c is the physical direction of axis c

    @classmethod
    def from_image(cls, image) -> "Geometry":
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        """numpy shape ``(k, j, i)``."""
        return tuple(reversed(self.size))

    def apply(self, image):
        """Stamp this geometry on a SimpleITK image (its size must match)."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def to_image(self, array: np.ndarray, vector: bool = False):
        """SimpleITK image from a ``[k, j, i]`` (or ``[k, j, i, c]`` with ``vector``) array."""
        import SimpleITK as sitk

        return self.apply(sitk.GetImageFromArray(array, isVector=vector))

    def index_to_physical(self, index) -> np.ndarray:
        """Continuous (i, j, k) index (…, 3) → physical point (…, 3)."""
        index = np.asarray(index, dtype=float)
        return np.asarray(self.origin) + (index * np.asarray(self.spacing)) @ self.matrix.T

    def physical_to_index(self, point) -> np.ndarray:
        point = np.asarray(point, dtype=float) - np.asarray(self.origin)
        return (point @ np.linalg.inv(self.matrix).T) / np.asarray(self.spacing)

    def corners(self) -> np.ndarray:
        """The 8 outer corners of the voxel grid (voxel edges, not centres) in physical space."""
        lo = np.full(3, -0.5)
        hi = np.asarray(self.size, dtype=float) - 0.5
        pts = np.array([[(hi if b else lo)[a] for a, b in enumerate(bits)]
                        for bits in np.ndindex(2, 2, 2)], dtype=float)
        return self.index_to_physical(pts)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.corners()
        return c.min(axis=0), c.max(axis=0)

    def same_grid(self, other: "Geometry", tol: float = 1e-4) -> bool:
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
                and np.allclose(self.origin, other.origin, atol=tol * max(1.0, max(self.spacing)))
                and np.allclose(self.direction, other.direction, atol=tol))

    def strided(self, stride: int, size: tuple[int, int, int] | None = None) -> "Geometry":
        """Grid of a network layer at ``stride``: voxel ``n`` covers input voxels ``[n·s, (n+1)·s)``,
        so its centre sits at input index ``n·s + (s−1)/2``."""
        s = int(stride)
        origin = self.index_to_physical(np.full(3, (s - 1) / 2.0))
        if size is None:
            size = tuple(math.ceil(n / s) for n in self.size)
        return Geometry(tuple(int(n) for n in size), tuple(sp * s for sp in self.spacing),
                        tuple(float(o) for o in origin), self.direction)

    def subgrid(self, start, size) -> "Geometry":
        """The grid of the voxels ``[start, start + size)`` (may extend beyond this grid)."""
        origin = self.index_to_physical(np.asarray(start, dtype=float))
        return Geometry(tuple(int(n) for n in size), self.spacing, tuple(float(o) for o in origin), self.direction)

    def with_spacing(self, spacing) -> "Geometry":
        """Same physical extent and direction, new spacing (edge-aligned: the grids share their outer corner)."""
        spacing = np.asarray(spacing, dtype=float)
        old = np.asarray(self.spacing)
        size = np.maximum(1, np.round(np.asarray(self.size) * old / spacing)).astype(int)
        corner = self.index_to_physical(np.full(3, -0.5))
        origin = corner + (0.5 * spacing) @ self.matrix.T
        return Geometry(tuple(int(n) for n in size), tuple(float(s) for s in spacing),
                        tuple(float(o) for o in origin), self.direction)

    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def as_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}


def lps_to_ras(point) -> list[float]:
    p = np.asarray(point, dtype=float)
    return [float(-p[0]), float(-p[1]), float(p[2])]
