"""Multiple-sclerosis white-matter lesions (also reused for small-vessel hyperintensities).

Lesions are ovoid and sit in three typical places: periventricular (long axis perpendicular to
the ventricle wall, like Dawson's fingers), juxtacortical (touching the cortex) and deep white
matter. New lesions for the longitudinal task are drawn away from existing ones, so a new label
never covers tissue that was already abnormal at baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from LesionFactorizerLib.phantoms.anatomy import Anatomy
from LesionFactorizerLib.phantoms.fields import uniform_rotation
from LesionFactorizerLib.phantoms.shapes import paint_blob


def _gradient_dir(field: np.ndarray, p: np.ndarray) -> np.ndarray:
    i = tuple(int(round(v)) for v in p)
    g = np.zeros(3, np.float32)
    for k in range(3):
        lo = list(i)
        hi = list(i)
        lo[k] = max(lo[k] - 1, 0)
        hi[k] = min(hi[k] + 1, field.shape[k] - 1)
        g[k] = field[tuple(hi)] - field[tuple(lo)]
    n = float(np.linalg.norm(g))
    return g / n if n > 1e-6 else np.array([1.0, 0.0, 0.0], np.float32)


def _frame(axis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = axis / max(float(np.linalg.norm(axis)), 1e-6)
    t = rng.standard_normal(3)
    b = np.cross(a, t)
    b /= max(float(np.linalg.norm(b)), 1e-6)
    return np.stack([a, b, np.cross(a, b)], 1).astype(np.float32)


def paint_wm_lesions(
    target: np.ndarray,
    rng: np.random.Generator,
    anat: Anatomy,
    count: int,
    periventricular: float = 0.45,
    juxtacortical: float = 0.2,
    size_scale: float = 1.0,
    avoid: np.ndarray | None = None,
    min_radius: float = 1.2,
    intensity: np.ndarray | None = None,
) -> list[dict]:
    """Paint ``count`` ovoid lesions into ``target``; returns their descriptions.

    ``avoid`` (soft map) keeps new lesions at least a few mm from existing ones; ``intensity``
    receives a per-lesion brightness factor where the lesion is.
    """
    wm_weight = np.clip((anat.wm - 0.3) / 0.5, 0, 1).astype(np.float32) * np.clip(1.0 - 2.0 * anat.csf, 0, 1)
    core_wm = anat.wm > 0.7
    peri = core_wm & (anat.ventricle_dist > 1) & (anat.ventricle_dist < 7)
    juxta = (anat.wm > 0.45) & (anat.gm > 0.2) & (anat.depth > 4) & (anat.depth < 16)
    deep = core_wm & (anat.ventricle_dist > 8) & (anat.depth > 12)
    blocked = None
    if avoid is not None:
        blocked = ndi.binary_dilation(avoid > 0.1, iterations=4)
    pools = {"periventricular": np.argwhere(peri), "juxtacortical": np.argwhere(juxta), "deep": np.argwhere(deep)}
    probs = np.array([periventricular, juxtacortical, max(1.0 - periventricular - juxtacortical, 0.0)])
    probs /= probs.sum()
    out: list[dict] = []
    tries = 0
    while len(out) < count and tries < count * 20:
        tries += 1
        where = str(rng.choice(list(pools), p=probs))
        pool = pools[where]
        if len(pool) == 0:
            continue
        p = pool[rng.integers(len(pool))].astype(np.float32)
        if blocked is not None and blocked[tuple(p.astype(int))]:
            continue
        long_r = float(np.exp(rng.uniform(np.log(2.0), np.log(7.5)))) * size_scale
        long_r = max(long_r, min_radius)
        radii = np.array([long_r, long_r * rng.uniform(0.5, 0.8), long_r * rng.uniform(0.5, 0.8)])
        if where == "periventricular":
            rot = _frame(_gradient_dir(anat.ventricle_dist, p), rng)
        else:
            rot = uniform_rotation(rng)
        sl, soft = paint_blob(target, rng, p, radii, rot, roughness=0.15, edge_mm=1.2, weight=wm_weight)
        if blocked is not None:
            target[sl] *= ~blocked[sl]  # a new lesion never overlaps an old one
            soft = soft * ~blocked[sl]
        if float(soft.max()) < 0.5:
            continue
        if intensity is not None:
            intensity[sl] = np.where(soft > 0.05, float(rng.uniform(0.8, 1.1)), intensity[sl])
        out.append({"type": where, "radius_mm": round(long_r, 1)})
    return out


@dataclass
class MSLesions:
    old: np.ndarray  # soft maps on the template box
    new: np.ndarray
    brightness: np.ndarray  # per-lesion FLAIR factor
    meta: dict


def make_ms(rng: np.random.Generator, anat: Anatomy) -> MSLesions:
    old = np.zeros(anat.shape, np.float32)
    new = np.zeros(anat.shape, np.float32)
    brightness = np.ones(anat.shape, np.float32)
    n_old = int(rng.integers(3, 30))
    # About a third of MSSEG-2 patients have no new lesion; the rest mostly a few.
    n_new = 0 if rng.random() < 0.35 else int(min(1 + rng.geometric(0.35), 10))
    old_desc = paint_wm_lesions(old, rng, anat, n_old, intensity=brightness)
    new_desc = paint_wm_lesions(new, rng, anat, n_new, avoid=old, min_radius=1.8, intensity=brightness)
    return MSLesions(old, new, brightness, {"old_lesions": len(old_desc), "new_lesions": len(new_desc), "new": new_desc})
