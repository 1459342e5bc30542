"""Ischaemic stroke model: infarcts shaped by arterial territories, plus unlabelled distractors.

Territories (ACA, MCA, PCA, vertebro-basilar) are assigned from MNI coordinates with noisy
borders — a coarse version of the standard territory atlases, enough to give infarcts their
characteristic shapes: cortical wedges with the apex towards the ventricles, deep lenticulostriate
/ lacunar infarcts, embolic showers of small dots, and large MCA infarcts. Chronic small-vessel
white-matter hyperintensities (bright on FLAIR only) are added as unlabelled distractors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from LesionFactorizerLib.phantoms.anatomy import Anatomy
from LesionFactorizerLib.phantoms.fields import SmoothField, box_coords, smoothstep, uniform_rotation
from LesionFactorizerLib.phantoms.shapes import local_box, paint_blob
from LesionFactorizerLib.phantoms.ms import paint_wm_lesions

TERRITORIES = ("ACA", "MCA", "PCA", "VB")


def territory_of(anat: Anatomy, coords: np.ndarray, wobble: tuple[SmoothField, SmoothField] | None = None) -> np.ndarray:
    """Territory index (into TERRITORIES) of box points (3, ...), from their MNI position.

    ``wobble`` bends the borders by several mm, as territories vary between people.
    """
    x, y, z = anat.mni(coords)
    if wobble is not None:
        w = 6.0 * wobble[0].at(coords)
        y, z = y + w, z - 0.6 * w
        x = x + np.sign(x) * 5.0 * wobble[1].at(coords)
    ax = np.abs(x)
    out = np.full(x.shape, 1, np.int8)  # MCA by default: lateral hemisphere and basal ganglia
    aca = (ax < 20) & (y > -50) & (z > 12 - 0.2 * (y + 20)) | (ax < 14) & (y > 20) & (z > -15)
    pca = (y < -68) | ((z < 2) & (y < -30)) | ((ax < 22) & (y > -38) & (y < -8) & (z > -8) & (z < 16))
    vb = (z < -22) & (y < -28) | (ax < 12) & (z < -8) & (y < -12) & (y > -42)
    out[aca] = 0
    out[pca] = 2
    out[vb] = 3
    return out


@dataclass
class Stroke:
    infarct: np.ndarray  # soft map on the template box
    age: np.ndarray  # per-lesion age 0 (hyperacute) … 1 (subacute) where infarct > 0
    wmh: np.ndarray  # unlabelled white-matter hyperintensities
    meta: dict


def _seed_in(rng, anat: Anatomy, mask: np.ndarray) -> np.ndarray | None:
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return None
    return idx[rng.integers(len(idx))].astype(np.float32)


def make_stroke(rng: np.random.Generator, anat: Anatomy) -> Stroke:
    shape = anat.shape
    infarct = np.zeros(shape, np.float32)
    age = np.zeros(shape, np.float32)
    par = anat.gm + anat.wm
    parenchyma = np.clip((par - 0.25) / 0.5, 0, 1).astype(np.float32)
    wobble = (SmoothField(rng, (0, 0, 0), shape, 25.0), SmoothField(rng, (0, 0, 0), shape, 20.0))
    # Territories on a 2 mm lattice, repeated to 1 mm: their borders are fuzzy at that scale anyway
    # and this is 8× cheaper than evaluating every voxel.
    coarse = np.stack(np.meshgrid(*[np.arange(0, n, 2, dtype=np.float32) for n in shape], indexing="ij"))
    terr = territory_of(anat, coarse, wobble)
    terr = terr.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: shape[0], : shape[1], : shape[2]]
    x_mni = anat.mni0[0] + anat.mni_sign[0] * np.arange(shape[2], dtype=np.float32)[None, None, :]
    side = 1.0 if rng.random() < 0.5 else -1.0
    hemi = (x_mni * side) > 2
    centre = np.array(shape, np.float32) / 2

    kind = rng.choice(["cortical", "large", "lacunar", "shower", "multi"], p=[0.4, 0.15, 0.15, 0.1, 0.2])
    plans: list[tuple[str, int]] = []
    if kind == "multi":
        plans = [(str(rng.choice(["cortical", "lacunar"])), int(rng.integers(0, 4))) for _ in range(int(rng.integers(2, 4)))]
    elif kind == "shower":
        t = int(rng.choice([0, 1, 1, 2, 3]))
        plans = [("dot", t)] * int(rng.integers(3, 9))
    else:
        plans = [(str(kind), int(rng.choice([0, 1, 1, 1, 2, 3])))]
    lesions = []
    for sub, t in plans:
        if sub == "large":
            t = 1
        in_terr = (terr == t) & hemi
        if sub in ("cortical", "large", "dot"):
            seed_mask = in_terr & (anat.gm > 0.5) & (anat.depth < 14) & (anat.depth > 2)
        else:  # lacunar: deep grey nuclei, internal capsule, corona radiata
            seed_mask = in_terr & (par > 0.8) & (anat.depth > 22) & (anat.ventricle_dist > 3) & (anat.ventricle_dist < 20)
        p = _seed_in(rng, anat, seed_mask)
        if p is None:
            continue
        if sub == "dot":
            radius = float(rng.uniform(1.5, 4.0))
            radii, rot = radius * rng.uniform(0.8, 1.2, 3), uniform_rotation(rng)
            c = p
        elif sub == "lacunar":
            radius = float(rng.uniform(2.0, 8.0))
            radii, rot, c = radius * np.array([1.0, 0.7, 0.7]) * rng.uniform(0.85, 1.15, 3), uniform_rotation(rng), p
        else:
            radius = float(np.exp(rng.uniform(np.log(22.0), np.log(45.0)) if sub == "large" else rng.uniform(np.log(5.0), np.log(28.0))))
            inward = centre - p
            inward /= max(float(np.linalg.norm(inward)), 1e-3)
            sl, soft = _paint_wedge(infarct, rng, p, inward, radius, parenchyma * ((terr == t) & hemi))
            radii = np.array([radius])
        if sub in ("dot", "lacunar"):
            sl, soft = paint_blob(infarct, rng, c, radii, rot, roughness=0.2 if sub != "dot" else 0.1,
                                  edge_mm=1.0, weight=parenchyma)
        lesion_age = float(rng.uniform(0.0, 1.0))
        age[sl] = np.where(soft > 0.05, lesion_age, age[sl])
        lesions.append({"type": sub, "territory": TERRITORIES[t], "radius_mm": round(float(max(radii)), 1), "age": round(lesion_age, 2)})

    wmh = np.zeros(shape, np.float32)
    if rng.random() < 0.5:
        paint_wm_lesions(wmh, rng, anat, int(rng.integers(3, 25)), periventricular=0.7, juxtacortical=0.0, size_scale=1.3)
    return Stroke(infarct, age, wmh, {"pattern": str(kind), "side": "left" if side < 0 else "right", "lesions": lesions})


def _paint_wedge(target, rng, apex_out, inward, width, weight):
    """A cortical infarct: broad along the cortex, narrowing towards the ventricle, rough-edged."""
    depth = width * float(rng.uniform(0.9, 1.6))
    reach = max(width, depth) * 1.4 + 4
    lo, size = local_box(apex_out + inward * depth * 0.4, reach, target.shape)
    coords = box_coords(lo, size)
    d = coords - apex_out.reshape(3, 1, 1, 1).astype(np.float32)
    t = np.tensordot(inward.astype(np.float32), d, axes=1)
    lateral = np.sqrt(np.maximum((d * d).sum(0) - t * t, 0.0))
    frac = np.clip(t / depth, 0.0, 1.0)
    half_width = width * (1.0 - 0.75 * frac)
    noise = SmoothField(rng, lo, np.asarray(lo) + np.asarray(size), max(width * 0.5, 2.0)).at(coords)
    along = np.abs(t - depth * 0.35) / (depth * 0.65 + 2.0)
    # A rounded (p = 3) rather than box-like combination of depth and width: no square corners.
    phi = (along**3 + (lateral / half_width) ** 3) ** (1.0 / 3.0) + 0.2 * noise
    soft = smoothstep((1.0 - phi) * width, 1.0)
    sl = tuple(slice(l, l + s) for l, s in zip(lo, size))
    soft = soft * np.asarray(weight, np.float32)[sl]
    np.maximum(target[sl], soft, out=target[sl])
    return sl, soft
