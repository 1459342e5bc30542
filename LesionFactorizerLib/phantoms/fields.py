"""Random smooth fields and resampling helpers shared by the lesion models and the synthesis.

Smooth random fields are drawn on a coarse lattice and read back by trilinear interpolation at
arbitrary coordinates: that is cheap for millions of voxels and lets one field be evaluated
consistently on any grid (template box, a lesion's bounding box, a case's output grid).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def sample(volume: np.ndarray, coords: np.ndarray, cval: float = 0.0) -> np.ndarray:
    """Trilinear read of ``volume`` at ``coords`` (3, ...) given in its index space."""
    return ndi.map_coordinates(volume, coords, order=1, mode="constant", cval=cval, prefilter=False).astype(
        np.float32, copy=False
    )


class SmoothField:
    """A zero-mean, unit-variance Gaussian random field with correlation length ``scale_mm``.

    Defined over a box (``lo``..``hi`` in mm, z, y, x) and readable anywhere inside it.
    """

    def __init__(self, rng: np.random.Generator, lo, hi, scale_mm: float):
        self.cell = max(scale_mm / 2.0, 0.5)
        self.lo = np.asarray(lo, np.float32) - 2 * self.cell
        extent = np.asarray(hi, np.float32) + 2 * self.cell - self.lo
        shape = np.maximum(np.ceil(extent / self.cell).astype(int) + 1, 4)
        grid = ndi.gaussian_filter(rng.standard_normal(tuple(shape), dtype=np.float32), 1.0, mode="wrap")
        self.grid = (grid - grid.mean()) / max(float(grid.std()), 1e-6)

    def at(self, coords: np.ndarray) -> np.ndarray:
        c = (coords - self.lo.reshape((3,) + (1,) * (coords.ndim - 1))) / self.cell
        return ndi.map_coordinates(self.grid, c, order=1, mode="nearest", prefilter=False)


def box_coords(lo, shape) -> np.ndarray:
    """Index coordinates (3, *shape) of a sub-box of the template grid starting at ``lo``."""
    return np.stack(
        np.meshgrid(*[np.arange(l, l + s, dtype=np.float32) for l, s in zip(lo, shape)], indexing="ij")
    )


def smoothstep(x: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Soft 0→1 transition over about ``edge`` units: gives lesions partial-volume borders."""
    return (1.0 / (1.0 + np.exp(-np.clip(x / max(edge, 1e-3) * 4.0, -30, 30)))).astype(np.float32)


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation matrix with angles up to ``max_deg`` about each axis."""
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


def uniform_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


def bias_field(rng: np.random.Generator, shape, strength: float) -> np.ndarray:
    """Multiplicative receive-coil bias: exp of a random polynomial of degree ≤ 3 (smooth, global)."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    basis = [np.stack([np.ones_like(t), t, t * t - 1 / 3, t**3 - 0.6 * t]) for t in axes]
    coef = rng.standard_normal((4, 4, 4)).astype(np.float32)
    order = np.add.outer(np.add.outer(np.arange(4), np.arange(4)), np.arange(4))
    coef *= 1.0 / (1.0 + order) ** 1.5
    coef[0, 0, 0] = 0.0
    log = np.einsum("ijk,iz,jy,kx->zyx", coef, *basis, optimize=True)
    log *= strength / max(float(log.std()), 1e-6)
    return np.exp(log).astype(np.float32)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels (MRI magnitude images)."""
    re = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im)


def acquisition_blur(image: np.ndarray, out_spacing, acquired_mm) -> np.ndarray:
    """Blur as if acquired at ``acquired_mm`` (z, y, x) and resampled to ``out_spacing``.

    Thick 2-D slices are common for clinical T2/FLAIR; a Gaussian of FWHM √(acq² − out²) mimics
    the lost through-plane detail.
    """
    sig = [np.sqrt(max(a * a - s * s, 0.0)) / 2.355 / s for a, s in zip(acquired_mm, out_spacing)]
    if max(sig) < 0.2:
        return image
    return ndi.gaussian_filter(image, sig, mode="nearest")
