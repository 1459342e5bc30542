"""A case's output grid and the random smooth warp from it into template space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from LesionFactorizerLib.phantoms.anatomy import Anatomy
from LesionFactorizerLib.phantoms.fields import SmoothField, random_rotation


_FOV_ROOM = 1.16  # ≥ the largest brain scaling below (1.1 × 1.04) plus rotation


@dataclass(frozen=True)
class OutputGrid:
    """Axis-aligned grid (z, y, x order) centred on the brain, in template-box millimetres."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    centre: tuple[float, float, float]

    def coords(self) -> np.ndarray:
        axes = [
            (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s + c
            for n, s, c in zip(self.shape, self.spacing, self.centre)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"))

    def first_voxel(self) -> np.ndarray:
        return np.array([c - (n - 1) / 2.0 * s for n, s, c in zip(self.shape, self.spacing, self.centre)])

    def sitk_geometry(self, anat: Anatomy) -> dict:
        """Origin/spacing/direction for SimpleITK so outputs sit where the template's brain sits."""
        d = np.array(anat.direction).reshape(3, 3)
        first_xyz = self.first_voxel()[::-1]
        origin = np.array(anat.origin_lps) + d @ first_xyz
        return {
            "origin": tuple(float(v) for v in origin),
            "spacing": tuple(float(v) for v in self.spacing[::-1]),
            "direction": tuple(float(v) for v in anat.direction),
        }


def output_grid(anat: Anatomy, spacing_zyx, size_zyx=None) -> OutputGrid:
    """Default field of view: the cropped template box plus room for the largest random brain
    scaling (so no brain is cut off); ``size_zyx`` fixes the voxel counts instead."""
    spacing = tuple(float(s) for s in spacing_zyx)
    extent = np.array(anat.shape, float)
    if size_zyx is None:
        shape = tuple(int(max(np.ceil(e * _FOV_ROOM / s), 4)) for e, s in zip(extent, spacing))
    else:
        shape = tuple(int(n) for n in size_zyx)
    centre = tuple(float(v) for v in (extent - 1) / 2.0)
    return OutputGrid(shape=shape, spacing=spacing, centre=centre)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GlobalWarp:
    """Pull-back map output point p → template point: c + A (p − c) + t + u(p), u smooth."""

    centre: np.ndarray
    matrix: np.ndarray
    shift: np.ndarray
    fields: tuple[SmoothField, SmoothField, SmoothField]
    amplitude: float

    def __call__(self, p: np.ndarray) -> np.ndarray:
        c = self.centre.reshape(3, *([1] * (p.ndim - 1)))
        q = np.tensordot(self.matrix, p - c, axes=1) + c + self.shift.reshape(c.shape)
        for k in range(3):
            q[k] += self.amplitude * self.fields[k].at(p)
        return q.astype(np.float32, copy=False)



def residual_motion(rng: np.random.Generator, centre, max_mm: float, max_deg: float):
    """A small rigid motion of template points (residual misregistration between scans).

    Applied after the case warp, so both time points share the costly elastic evaluation.
    """
    rot = random_rotation(rng, max_deg)
    shift = rng.uniform(-max_mm, max_mm, 3).astype(np.float32)
    c = np.asarray(centre, np.float32)

    def move(q: np.ndarray) -> np.ndarray:
        cc = c.reshape(3, *([1] * (q.ndim - 1)))
        return (np.tensordot(rot, q - cc, axes=1) + cc + shift.reshape(cc.shape)).astype(np.float32)

    return move


def random_global_warp(rng: np.random.Generator, anat: Anatomy, grid: OutputGrid) -> tuple[GlobalWarp, dict]:
    """Head pose, brain size/shape and a smooth non-linear deformation for one case."""
    rot = random_rotation(rng, 8.0)
    scale = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 3)
    matrix = (rot @ np.diag(1.0 / scale)).astype(np.float32)
    shift = rng.uniform(-4, 4, 3).astype(np.float32)
    # Defined over a fixed region around the template, not the grid, so it is grid-independent.
    lo = -0.3 * np.array(anat.shape, float)
    hi = 1.3 * np.array(anat.shape, float)
    fields = tuple(SmoothField(rng, lo, hi, 30.0) for _ in range(3))
    amp = float(rng.uniform(1.0, 3.0))
    warp = GlobalWarp(np.array(grid.centre, np.float32), matrix, shift, fields, amp)  # type: ignore[arg-type]
    return warp, {"scale_zyx": [round(float(s), 3) for s in scale], "elastic_mm": round(amp, 2)}
