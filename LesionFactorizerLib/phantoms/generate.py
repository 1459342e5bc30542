"""One synthetic case per call: anatomy → per-case warp → lesions → contrasts → labels.

Every random choice comes from one generator seeded by (seed, task, index), so a case does not
depend on how many others are generated with it, and the same arguments give identical voxels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from LesionFactorizerLib.phantoms import contrasts as C
from LesionFactorizerLib.core.tasks import TASKS as _TASKS
from LesionFactorizerLib.phantoms.anatomy import Anatomy, load_anatomy
from LesionFactorizerLib.phantoms.fields import SmoothField, sample
from LesionFactorizerLib.phantoms.geometry import OutputGrid, output_grid, random_global_warp, residual_motion

TASKS = tuple(_TASKS)  # tumor, stroke, ms-new
# Image names and label values come from the task definitions (one home for task knowledge);
# every phantom provides all inputs, optional ones included (stroke FLAIR).
CHANNELS = {name: tuple(t.input_names) for name, t in _TASKS.items()}
LABELS = {name: {spec.value: spec.title for spec in t.labels} for name, t in _TASKS.items()}
DEFAULT_SPACING = {"tumor": 1.0, "stroke": 2.0, "ms-new": 1.0}
_TASK_KEY = {"tumor": 1, "stroke": 2, "ms-new": 3}


@dataclass
class PhantomCase:
    task: str
    index: int
    images: dict[str, np.ndarray]  # int16 (z, y, x)
    label: np.ndarray  # uint8 (z, y, x), product label values
    geometry: dict  # SimpleITK origin / spacing / direction
    meta: dict = field(default_factory=dict)


@dataclass
class _Tissue:
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    texture: np.ndarray


def _tissue_at(anat: Anatomy, r: np.ndarray, texture: SmoothField, gamma: float) -> _Tissue:
    """Tissue fractions read at template points r, with per-case atrophy and crisper boundaries.

    The template is an average of 152 brains, so its GM/WM borders are blurrier than one
    subject's; a logistic sharpening of the WM share restores a single-subject look while keeping
    one-voxel partial volume. Raising the parenchyma fraction to a power > 1 widens sulci and
    ventricles a little (atrophy), a common difference between patients.
    """
    gm, wm, brain = sample(anat.gm, r), sample(anat.wm, r), sample(anat.brain, r)
    par = np.clip(gm + wm, 0.0, 1.0)
    share = wm / np.maximum(par, 1e-3)
    share = 1.0 / (1.0 + np.exp(-(share - 0.5) * 9.0))
    par = np.minimum(par, brain) ** gamma
    return _Tissue(
        gm=(par * (1.0 - share)).astype(np.float32),
        wm=(par * share).astype(np.float32),
        csf=np.clip(brain - par, 0.0, 1.0).astype(np.float32),
        brain=brain,
        texture=texture.at(r),
    )


def _atrophy(rng: np.random.Generator) -> float:
    return float(rng.uniform(1.0, 1.8))


@dataclass
class _Rngs:
    """Independent random streams, so the lesions and the anatomy of a case do not change with
    the output grid (--spacing/--size only change how the same patient is scanned)."""

    lesion: np.random.Generator
    anatomy: np.random.Generator
    scan: np.random.Generator


def _case_rngs(seed: int, task: str, index: int) -> _Rngs:
    seq = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _TASK_KEY[task], int(index)])
    return _Rngs(*(np.random.default_rng(s) for s in seq.spawn(3)))


def generate_case(
    task: str,
    seed: int,
    index: int = 0,
    spacing: tuple[float, float, float] | float | None = None,
    size: tuple[int, int, int] | None = None,
) -> PhantomCase:
    """Generate case ``index`` of a data set seeded with ``seed``.

    ``spacing`` (mm, x, y, z or one value) and ``size`` (voxels, x, y, z) set the output grid; by
    default the cropped template at the task's usual resolution.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    t0 = time.perf_counter()
    rngs = _case_rngs(seed, task, index)
    anat = load_anatomy()
    if spacing is None:
        spacing = DEFAULT_SPACING[task]
    sp_xyz = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)  # type: ignore[arg-type]
    grid = output_grid(anat, sp_xyz[::-1], None if size is None else tuple(size)[::-1])
    warp, warp_meta = random_global_warp(rngs.anatomy, anat, grid)
    texture = SmoothField(rngs.anatomy, (-10, -10, -10), np.array(anat.shape) + 10, 2.0)
    if task == "tumor":
        images, label, meta = _tumor(rngs, anat, grid, warp, texture)
    elif task == "stroke":
        images, label, meta = _stroke(rngs, anat, grid, warp, texture)
    else:
        images, label, meta = _ms(rngs, anat, grid, warp, texture)
    meta.update(warp_meta)
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    return PhantomCase(task, index, images, label, grid.sitk_geometry(anat), meta)


def _skull_strip(brain: np.ndarray) -> np.ndarray:
    return (brain > 0.5).astype(np.float32)


def _tumor(rngs: _Rngs, anat: Anatomy, grid: OutputGrid, warp, texture):
    rng = rngs.scan
    from LesionFactorizerLib.phantoms.glioma import make_glioma

    tumor = make_glioma(rngs.lesion, anat)
    q = warp(grid.coords())
    r = tumor.pullback(q)
    tis = _tissue_at(anat, r, texture, _atrophy(rngs.anatomy))
    core, enh, ede = sample(tumor.core, q), sample(tumor.enhancing, q), sample(tumor.edema, q)
    ttex = tumor.texture.at(q)
    necro = np.clip(core - enh, 0, 1)
    # Oedema shows most in white matter; its strength fades towards the front with some texture.
    share = tis.wm / np.maximum(tis.wm + tis.gm, 1e-3)
    edema_frac = np.clip(ede - core, 0, 1) * np.clip(0.55 + 0.35 * share + 0.12 * ttex, 0, 1)
    normal = 1.0 - core - edema_frac
    plexus = np.minimum(sample(tumor.plexus, r), tis.csf) * normal
    fractions = {
        "gm": tis.gm * normal,
        "wm": tis.wm * normal,
        "csf": tis.csf * normal - plexus,
        "plexus": plexus,
        "edema": edema_frac * tis.brain,
        "necrosis": necro,
        "enhancing": enh,
    }
    vals = C.jittered_tissues(rngs.anatomy)
    mask = _skull_strip(np.maximum(tis.brain, core))
    images = {}
    for name in CHANNELS["tumor"]:
        v = {t: vals[t][name] for t in fractions}
        v["enhancing"] = v["enhancing"] * (1.0 + 0.18 * ttex)
        v["necrosis"] = v["necrosis"] * (1.0 + 0.12 * ttex)
        signal = C.mix(fractions, v) * (1.0 + 0.035 * tis.texture)
        acq = C.random_acquisition(rng, grid.spacing, 0.15 if name.startswith("t1") else 0.6)
        img = C.acquire(rng, signal, grid.spacing, acquired_mm=acq, snr=rng.uniform(18, 40),
                        bias=rng.uniform(0.05, 0.2), reference_level=vals["wm"][name])
        images[name] = C.to_int16(img, mask, rng.uniform(300, 1500) / vals["wm"][name])
    label = np.zeros(grid.shape, np.uint8)
    label[(ede > 0.5) | (core > 0.5)] = 2
    label[core > 0.5] = 1
    label[(enh > 0.5) & (core > 0.5)] = 3
    label *= mask.astype(np.uint8)
    vox_ml = float(np.prod(grid.spacing)) / 1000.0
    meta = dict(tumor.meta)
    meta["volumes_ml"] = {n: round(float((label == k).sum()) * vox_ml, 2) for k, n in ((1, "ncr"), (2, "ed"), (3, "et"))}
    return images, label, meta


def _stroke(rngs: _Rngs, anat: Anatomy, grid: OutputGrid, warp, texture):
    rng = rngs.scan
    from LesionFactorizerLib.phantoms.stroke import make_stroke

    stroke = make_stroke(rngs.lesion, anat)
    r = warp(grid.coords())
    tis = _tissue_at(anat, r, texture, _atrophy(rngs.anatomy))
    inf = sample(stroke.infarct, r) * tis.brain
    age = sample(stroke.age, r)
    wmh = sample(stroke.wmh, r) * (1.0 - inf)
    normal = 1.0 - inf - wmh
    fractions = {"gm": tis.gm * normal, "wm": tis.wm * normal, "csf": tis.csf * normal, "infarct": inf, "wm_lesion": wmh}
    vals = C.jittered_tissues(rngs.anatomy)
    tex = 1.0 + 0.035 * tis.texture

    def values(contrast):
        v = {t: vals[t][contrast] for t in fractions}
        if contrast in C.AGE_GAIN:  # infarcts brighten on T2/FLAIR and ADC pseudo-normalises with age
            v["infarct"] = v["infarct"] + C.AGE_GAIN[contrast] * age
        # Infarcts are not uniform: the core is more restricted than the rim of the lesion.
        v["infarct"] = v["infarct"] * (1.0 + 0.10 * tis.texture)
        return v

    mask = _skull_strip(tis.brain)
    images = {}
    # Diffusion: per-tissue b0 and b1000 = b0·exp(−b·ADC), mixed, then noisy; ADC from the pair.
    v0, vadc = values("s0"), values("adc")
    b0 = C.mix(fractions, v0) * tex
    b1000 = C.mix(fractions, {t: v0[t] * np.exp(-vadc[t]) for t in fractions}) * tex
    bias = C.bias_field(rng, grid.shape, float(rng.uniform(0.05, 0.2)))
    acq = C.random_acquisition(rng, grid.spacing, 0.5)
    sigma = vals["wm"]["s0"] / float(rng.uniform(25, 45))
    b0n = C.rician(rng, C.acquisition_blur(b0 * bias, grid.spacing, acq), sigma)
    b1n = C.rician(rng, C.acquisition_blur(b1000 * bias, grid.spacing, acq), sigma)
    adc = np.log(np.maximum(b0n, 1e-4) / np.maximum(b1n, 1e-4)) * 1000.0  # 10⁻⁶ mm²/s
    adc = np.clip(adc, 0.0, 4000.0) * (b0 > 0.05 * vals["csf"]["s0"])
    images["dwi"] = C.to_int16(b1n, mask, float(rng.uniform(80, 400)) / (vals["wm"]["s0"] * np.exp(-vals["wm"]["adc"])))
    images["adc"] = C.to_int16(adc, mask, 1.0)
    fl = C.mix(fractions, values("flair")) * tex
    acq = C.random_acquisition(rng, grid.spacing, 0.5)
    img = C.acquire(rng, fl, grid.spacing, acquired_mm=acq, snr=rng.uniform(15, 35),
                    bias=rng.uniform(0.05, 0.2), reference_level=vals["wm"]["flair"])
    images["flair"] = C.to_int16(img, mask, rng.uniform(300, 1500) / vals["wm"]["flair"])
    label = ((inf > 0.5) & (mask > 0)).astype(np.uint8)
    meta = dict(stroke.meta)
    meta["volume_ml"] = round(float(label.sum()) * float(np.prod(grid.spacing)) / 1000.0, 2)
    return images, label, meta


def _ms(rngs: _Rngs, anat: Anatomy, grid: OutputGrid, warp, texture):
    rng = rngs.scan
    from LesionFactorizerLib.phantoms.ms import make_ms

    lesions = make_ms(rngs.lesion, anat)
    p = grid.coords()
    gamma = _atrophy(rngs.anatomy)
    vals = C.jittered_tissues(rngs.anatomy)
    # Both time points were registered to a "middle space": each keeps a small residual error.
    images = {}
    mask = None
    r_mid = warp(p)
    for name, with_new in (("flair_baseline", False), ("flair_followup", True)):
        r = residual_motion(rng, grid.centre, 0.4, 0.4)(r_mid)
        tis = _tissue_at(anat, r, texture, gamma)
        lesion = sample(lesions.old, r)
        if with_new:
            lesion = np.maximum(lesion, sample(lesions.new, r))
        lesion = lesion * np.clip(tis.wm + tis.gm, 0, 1)
        bright = sample(lesions.brightness, r, cval=1.0)
        normal = 1.0 - lesion
        fractions = {"gm": tis.gm * normal, "wm": tis.wm * normal, "csf": tis.csf * normal, "wm_lesion": lesion}
        drift = {t: vals[t]["flair"] * float(1.0 + rng.normal(0.0, 0.02)) for t in fractions}
        drift["wm_lesion"] = drift["wm_lesion"] * bright * (1.0 + 0.08 * tis.texture)
        signal = C.mix(fractions, drift) * (1.0 + 0.035 * tis.texture)
        acq = C.random_acquisition(rng, grid.spacing, 0.0)  # MSSEG-2 FLAIRs are 3-D acquisitions
        img = C.acquire(rng, signal, grid.spacing, acquired_mm=acq, snr=rng.uniform(15, 35),
                        bias=rng.uniform(0.05, 0.2), reference_level=vals["wm"]["flair"])
        if mask is None:
            mask = _skull_strip(tis.brain)  # one brain mask for both, as after co-registration
        images[name] = C.to_int16(img ** float(rng.uniform(0.95, 1.05)), mask, rng.uniform(200, 900) / vals["wm"]["flair"])
    new = sample(lesions.new, r_mid) * np.clip(sample(anat.wm, r_mid) + sample(anat.gm, r_mid), 0, 1)
    label = ((new > 0.5) & (mask > 0)).astype(np.uint8)
    meta = dict(lesions.meta)
    meta["new_volume_ml"] = round(float(label.sum()) * float(np.prod(grid.spacing)) / 1000.0, 3)
    return images, label, meta
