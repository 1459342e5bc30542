"""Glioma model: necrotic core, enhancing rim, infiltrative oedema and mass effect.

The tumour is drawn in "grown" template space q; the normal tissue seen at q comes from
r = M(q), a radial push-away from the tumour centre (mass effect), so gyri, sulci and ventricles
next to the tumour are displaced and compressed. Oedema spreads preferentially along white
matter (finger-like), avoids CSF, and the enhancing rim may be broken or solid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from LesionFactorizerLib.phantoms.anatomy import Anatomy
from LesionFactorizerLib.phantoms.fields import SmoothField, box_coords, sample, smoothstep, uniform_rotation
from LesionFactorizerLib.phantoms.shapes import ellipsoid_phi, local_box, paint_blob


@dataclass
class Glioma:
    centre: np.ndarray  # template-box mm (z, y, x)
    amp: float  # mass-effect strength (fraction of radius pulled back at the centre)
    sigma: float  # mass-effect reach (mm)
    core: np.ndarray  # soft maps on the whole template box, in grown space q
    enhancing: np.ndarray
    edema: np.ndarray
    texture: SmoothField
    meta: dict
    plexus: np.ndarray | None = None  # choroid plexus: normal tissue that enhances on T1Gd

    def pullback(self, q: np.ndarray) -> np.ndarray:
        """Map grown-space points to the undisplaced anatomy (radial, monotone for amp < 1)."""
        c = self.centre.reshape(3, *([1] * (q.ndim - 1))).astype(np.float32)
        d = q - c
        r2 = (d * d).sum(0)
        factor = 1.0 - self.amp * np.exp(-r2 / (2.0 * self.sigma**2))
        return (c + d * factor).astype(np.float32)


def _cerebral_wm_candidates(anat: Anatomy, min_depth: float) -> np.ndarray:
    idx = np.argwhere((anat.wm > 0.6) & (anat.depth > min_depth))
    x, y, z = anat.mni(idx.T.astype(np.float32))
    cerebrum = (z > -12) & ~((y < -50) & (z < 0)) & (np.abs(x) > 6)
    return idx[cerebrum]


def make_glioma(rng: np.random.Generator, anat: Anatomy) -> Glioma:
    rc = float(rng.uniform(7.0, 22.0))  # tumour-core radius, mm
    re = rc + float(rng.uniform(4.0, 28.0))  # oedema reach
    cands = _cerebral_wm_candidates(anat, min_depth=min(rc, 14.0))
    centre = cands[rng.integers(len(cands))].astype(np.float32) + rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    amp = float(rng.uniform(0.15, 0.55))
    sigma = rc * float(rng.uniform(1.1, 1.7))

    reach = re * 1.6 + 4
    lo, size = local_box(centre, reach, anat.shape)
    q = box_coords(lo, size)
    hi = np.asarray(lo) + np.asarray(size)
    g = Glioma(centre, amp, sigma, None, None, None, None, {})  # type: ignore[arg-type]
    r = g.pullback(q)
    wm_r, csf_r, brain_r = sample(anat.wm, r), sample(anat.csf, r), sample(anat.brain, r)

    rot = uniform_rotation(rng)
    radii = rc * rng.uniform(0.75, 1.25, 3)
    n1 = SmoothField(rng, lo, hi, rc * 0.7).at(q)
    phi_c = ellipsoid_phi(q, centre, radii, rot) + 0.22 * n1
    core = smoothstep((1.0 - phi_c) * rc, 1.2) * np.clip(brain_r * 1.2, 0, 1)

    necrotic = rng.random() < 0.8
    n2 = SmoothField(rng, lo, hi, 5.0).at(q)
    if necrotic:
        rim = float(rng.uniform(1.5, 5.0))
        shell = smoothstep((phi_c - (1.0 - rim / rc)) * rc, 0.8)
        patchy = smoothstep(n2 + float(rng.uniform(0.3, 2.5)), 0.6)
        enhancing = core * shell * patchy
    else:  # solid tumour with some non-enhancing parts
        enhancing = core * smoothstep(n2 + float(rng.uniform(-0.5, 1.5)), 0.6)

    # Oedema front: a lumpy sphere (±5 mm) that reaches further along white matter than into
    # cortex, kept to the one connected region around the core (real oedema is contiguous).
    n3 = SmoothField(rng, lo, hi, 9.0).at(q)
    wm_smooth = ndi.gaussian_filter(wm_r, 2.0)
    dist = np.sqrt(((q - centre.reshape(3, 1, 1, 1)) ** 2).sum(0))
    phi_e = (dist + 5.0 * n3) / re - 0.25 * (wm_smooth - 0.5)
    edema = smoothstep((1.0 - phi_e) * re, 2.5) * np.clip(1.0 - 1.5 * csf_r, 0, 1) * np.clip(brain_r * 1.2, 0, 1)
    edema = np.maximum(edema, core)  # oedema surrounds the core; WT ⊇ TC by construction
    parts, n = ndi.label(edema > 0.5)
    if n > 1:
        keep = np.unique(parts[core > 0.5])
        edema = edema * np.isin(parts, keep[keep > 0]) if keep.any() else edema
        edema = np.maximum(ndi.gaussian_filter(edema, 0.7), core)

    full = {name: np.zeros(anat.shape, np.float32) for name in ("core", "enhancing", "edema")}
    sl = tuple(slice(l, l + s) for l, s in zip(lo, size))
    full["core"][sl], full["enhancing"][sl], full["edema"][sl] = core, enhancing, edema
    g.core, g.enhancing, g.edema = full["core"], full["enhancing"], full["edema"]
    g.texture = SmoothField(rng, lo, hi, 2.5)
    g.plexus = choroid_plexus(rng, anat)
    x, y, z = anat.mni(centre.reshape(3, 1))
    g.meta = {
        "centre_mni": [round(float(v[0]), 1) for v in (x, y, z)],
        "core_radius_mm": round(rc, 1),
        "edema_reach_mm": round(re, 1),
        "necrotic": bool(necrotic),
        "mass_effect": round(amp, 2),
    }
    return g


def choroid_plexus(rng: np.random.Generator, anat: Anatomy) -> np.ndarray:
    """Soft map of the choroid plexus glomus in each ventricular atrium.

    It enhances on T1Gd like tumour does, so a model must learn that not every bright T1Gd spot
    is enhancing tumour.
    """
    out = np.zeros(anat.shape, np.float32)
    vent = np.argwhere(anat.ventricle_dist == 0)
    if len(vent) == 0:
        return out
    x, y, z = anat.mni(vent.T.astype(np.float32))
    for side in (-1.0, 1.0):
        target = np.array([side * 27.0, -40.0, 14.0]) + rng.normal(0, 2.0, 3)
        d = (x - target[0]) ** 2 + (y - target[1]) ** 2 + (z - target[2]) ** 2
        p = vent[int(np.argmin(d))].astype(np.float32)
        radii = rng.uniform(2.5, 4.5, 3)
        paint_blob(out, rng, p, radii, uniform_rotation(rng), roughness=0.25, edge_mm=0.8, weight=anat.csf)
    return out
