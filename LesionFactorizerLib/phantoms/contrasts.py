"""Tissue signal model: relative intensities per contrast, partial-volume mixing, acquisition.

Values are relative to white matter on T1 at about 1 and follow the usual clinical appearance
(T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF suppressed, GM > WM, oedema/demyelination
brightest; T1Gd: enhancing tumour brightest). Diffusion is modelled physically: each tissue has
a b=0 signal (T2-weighted EPI) and an ADC; b=1000 = S0·exp(−b·ADC) per tissue, then mixed, and
the ADC map is computed from the noisy b0/b1000 pair as a scanner would, so DWI and ADC stay
consistent everywhere, partial volume and noise included.
"""

from __future__ import annotations

import numpy as np

from LesionFactorizerLib.phantoms.fields import acquisition_blur, bias_field, rician

# Relative signal per tissue; "adc" in 10⁻³ mm²/s.
TISSUES: dict[str, dict[str, float]] = {
    "csf": {"t1": 0.25, "t1ce": 0.28, "t2": 1.00, "flair": 0.08, "s0": 1.00, "adc": 3.00},
    "gm": {"t1": 0.62, "t1ce": 0.65, "t2": 0.58, "flair": 0.61, "s0": 0.62, "adc": 0.83},
    "wm": {"t1": 0.92, "t1ce": 0.94, "t2": 0.40, "flair": 0.50, "s0": 0.46, "adc": 0.72},
    "edema": {"t1": 0.58, "t1ce": 0.60, "t2": 0.78, "flair": 0.80, "s0": 0.80, "adc": 1.30},
    "necrosis": {"t1": 0.30, "t1ce": 0.36, "t2": 0.92, "flair": 0.50, "s0": 0.95, "adc": 2.00},
    "enhancing": {"t1": 0.55, "t1ce": 1.45, "t2": 0.68, "flair": 0.80, "s0": 0.70, "adc": 0.95},
    # Choroid plexus: vascular, enhances avidly.
    "plexus": {"t1": 0.55, "t1ce": 1.20, "t2": 0.70, "flair": 0.55, "s0": 0.70, "adc": 1.00},
    # Acute infarct; its T2/FLAIR/S0 rise with lesion age (see AGE_GAIN).
    "infarct": {"t1": 0.56, "t1ce": 0.58, "t2": 0.64, "flair": 0.57, "s0": 0.70, "adc": 0.38},
    # Chronic white-matter lesions: MS plaques and small-vessel hyperintensities.
    "wm_lesion": {"t1": 0.62, "t1ce": 0.64, "t2": 0.76, "flair": 0.85, "s0": 0.76, "adc": 1.05},
}
AGE_GAIN = {"t2": 0.25, "flair": 0.28, "s0": 0.20, "adc": 0.12}


def jittered_tissues(rng: np.random.Generator, amount: float = 0.05) -> dict[str, dict[str, float]]:
    """Per-case tissue values: scanners and patients differ by several percent per tissue."""
    return {t: {c: v * float(1.0 + rng.normal(0.0, amount)) for c, v in vals.items()} for t, vals in TISSUES.items()}


def mix(fractions: dict[str, np.ndarray], values: dict[str, np.ndarray | float]) -> np.ndarray:
    """Partial-volume signal: Σ fraction × tissue value."""
    out = None
    for name, frac in fractions.items():
        term = frac * values[name]
        out = term if out is None else out + term
    assert out is not None
    return out.astype(np.float32, copy=False)


def acquire(
    rng: np.random.Generator,
    signal: np.ndarray,
    spacing,
    *,
    acquired_mm,
    snr: float,
    bias: float,
    reference_level: float,
) -> np.ndarray:
    """Coil bias, limited resolution and Rician noise, as a magnitude image would have them."""
    img = signal * bias_field(rng, signal.shape, bias) if bias > 0 else signal
    img = acquisition_blur(img, spacing, acquired_mm)
    return rician(rng, img, reference_level / snr)


def random_acquisition(rng: np.random.Generator, spacing, thick_prob: float) -> tuple[float, float, float]:
    """Acquired voxel size (z, y, x mm): sometimes thick 2-D slices along a random axis."""
    acq = [max(s, rng.uniform(0.9, 1.3)) for s in spacing]
    if rng.random() < thick_prob:
        axis = 0 if rng.random() < 0.7 else int(rng.integers(1, 3))  # mostly axial slices
        acq[axis] = max(spacing[axis], rng.uniform(2.5, 5.5))
    return tuple(float(a) for a in acq)  # type: ignore[return-value]


def to_int16(image: np.ndarray, mask: np.ndarray, gain: float) -> np.ndarray:
    """Scanner units: arbitrary gain, zero outside the skull-stripped brain, clipped to int16."""
    out = np.clip(np.rint(image * gain), 0, 32767) * mask
    return out.astype(np.int16)
