"""Per-voxel and per-lesion confidence of a segmentation.

Three measures, each answering a different question a reader asks about a lesion:

* ``confidence`` — mean foreground probability inside the lesion (the network's own belief,
  after averaging the TTA passes and ensemble members);
* ``uncertainty`` — mean predictive entropy inside the lesion, in bits of the foreground-vs-
  background decision (0: certain, 1: a coin flip); the voxel-wise map is what ``--uncertainty``
  writes;
* ``detected_fraction`` — the fraction of passes (TTA flips × ensemble members) whose own label
  map touches the lesion, and ``agreement``, the mean fraction of passes that label each of its
  voxels. Both need more than one pass; with one they are ``None`` and the report says why.

Pass agreement is collected during inference as one bit per pass per voxel (a uint8 for up to 8
passes), so no pass's logits are kept: :func:`pass_foreground` is the per-pass rule, run on each
pass's logits as they arrive (:func:`LesionFactorizerLib.pipeline.inference.run_inference`).

"Foreground" means "labelled as any lesion" under the run's :class:`OutputSpec`: the outermost
region for the BraTS hierarchy (whole tumour), any channel over the threshold for per-label
sigmoids, anything but background for softmax.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from LesionFactorizerLib.core.outputspec import BACKGROUND, OutputSpec

MAX_VOTE_PASSES = 64   # one bit per pass in a uint64; more passes keep no per-pass record
ONE_PASS_NOTE = ("one inference pass (no TTA, one model): detected_fraction and agreement need --tta or an "
                 "ensemble of models")


def vote_dtype(passes: int):
    """The smallest unsigned integer holding one bit per pass, or None beyond 64 passes."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if passes <= np.iinfo(dtype).bits:
            return dtype
    return None


def _foreground_channels(spec: OutputSpec) -> tuple[str, list[int]]:
    """("outer" | "any" | "not-background" | "background-below", channel indices) of the spec's
    foreground rule ("background-below": softmax under the hierarchical rule, where the whole
    tumour is 1 − p(background) above its threshold)."""
    if spec.activation == "softmax" and spec.mode == "hierarchical":
        return "background-below", [spec.channels.index(BACKGROUND)]
    if spec.activation == "softmax":
        return "not-background", [spec.channels.index(BACKGROUND)] if BACKGROUND in spec.channels else []
    if spec.mode == "hierarchical":
        return "outer", [spec.channels.index(spec.regions_outermost_first[0][0])]
    return "any", list(range(len(spec.channels)))


def pass_foreground(spec: OutputSpec) -> Callable:
    """One pass's logits ``(1, C, k, j, i)`` (torch) → bool ``(k, j, i)``: where that pass alone
    would label a lesion. Sigmoid thresholds are compared in logit units (no activation needed)."""
    kind, channels = _foreground_channels(spec)
    t = spec.threshold_for(spec.regions_outermost_first[0][0]) if spec.mode == "hierarchical" else spec.threshold
    cut = math.log(t / (1.0 - t))

    def foreground(logits):
        x = logits[0]
        if kind == "background-below":
            return x.softmax(dim=0)[channels[0]] < 1.0 - t
        if kind == "outer":
            return x[channels[0]] > cut
        if kind == "any":
            return x.amax(dim=0) > cut
        if not channels:   # softmax without a background channel labels every voxel
            return x[0] == x[0]
        return x.argmax(dim=0) != channels[0]
    return foreground


def foreground_probability(probs: np.ndarray, spec: OutputSpec) -> np.ndarray:
    """``(C, K, J, I)`` probabilities → float32 ``(K, J, I)`` probability of "some lesion"."""
    kind, channels = _foreground_channels(spec)
    if kind == "outer":
        return np.asarray(probs[channels[0]], dtype=np.float32)
    if kind == "background-below":
        return (1.0 - probs[channels[0]]).astype(np.float32, copy=False)
    if kind == "any":
        return probs.max(axis=0).astype(np.float32, copy=False)
    if not channels:
        return np.ones(probs.shape[1:], dtype=np.float32)
    return (1.0 - probs[channels[0]]).astype(np.float32, copy=False)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a yes/no decision with probability ``p`` (float32, 0 at p = 0 or 1)."""
    q = np.clip(p.astype(np.float32, copy=True), 1e-7, 1.0 - 1e-7)
    h = q * np.log2(q)
    h += (1.0 - q) * np.log2(1.0 - q)
    np.negative(h, out=h)
    h[(p <= 0.0) | (p >= 1.0)] = 0.0
    return h


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per element (passes that voted foreground)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.int64)
    values = np.asarray(values)
    count = np.zeros(values.shape, dtype=np.int64)
    for bit in range(np.iinfo(values.dtype).bits):
        count += (values >> values.dtype.type(bit)) & 1
    return count


def votes_to_reference(prep, votes: np.ndarray) -> np.ndarray:
    """Pass bits on the padded model box ``(k, j, i)`` → the reference grid, nearest neighbour
    (bits must not be interpolated); 0 (no pass) outside the box."""
    import SimpleITK as sitk

    si, sj, sk = prep.crop_size
    block = np.ascontiguousarray(votes[:sk, :sj, :si])
    out = np.zeros(prep.reference.shape, dtype=votes.dtype)
    if prep.identity:
        i0, j0, k0 = prep.crop_start
        out[k0:k0 + sk, j0:j0 + sj, i0:i0 + si] = block
        return out
    image = prep.crop_geometry.to_image(block)
    ref = sitk.Image(*prep.reference.size, sitk.sitkUInt8)
    prep.reference.apply(ref)
    res = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    return sitk.GetArrayFromImage(res).astype(votes.dtype, copy=False)


class ConfidenceMaps:
    """What the per-lesion measures are computed from, all on the reference grid."""

    def __init__(self, probability: np.ndarray, votes: np.ndarray | None, passes: int):
        self.probability = probability             # float32 (K, J, I): foreground probability
        self.votes = votes                          # uint (K, J, I): bit p = pass p labelled it; None: one pass
        self.passes = int(passes)

    def lesion(self, box: tuple, inside: np.ndarray) -> dict:
        """The measures of one lesion: ``box`` its bounding slices, ``inside`` its mask within the box."""
        p = self.probability[box][inside]   # entropy only where needed: no second full-size map
        row = {"confidence": float(p.mean(dtype=np.float64)),
               "uncertainty": float(binary_entropy(p).mean(dtype=np.float64)),
               "detected_fraction": None, "agreement": None}
        if self.votes is not None and self.passes > 1:
            bits = self.votes[box][inside]
            row["detected_fraction"] = float(popcount(np.bitwise_or.reduce(bits))) / self.passes
            row["agreement"] = float(popcount(bits).mean(dtype=np.float64)) / self.passes
        return row

    def entropy_map(self) -> np.ndarray:
        """The voxel-wise uncertainty map (``--uncertainty``): predictive entropy in bits."""
        return binary_entropy(self.probability)

    def summary(self) -> dict:
        """report.json ``confidence``: what the columns mean and how many passes they rest on."""
        out = {"passes": self.passes,
               "confidence": "mean foreground probability inside the lesion",
               "uncertainty": "mean predictive entropy inside the lesion (bits; 0 certain, 1 coin flip)",
               "detected_fraction": "fraction of passes (TTA flips x ensemble members) whose own labels touch "
                                    "the lesion",
               "agreement": "mean fraction of passes that label each voxel of the lesion"}
        if self.passes <= 1:
            out["note"] = ONE_PASS_NOTE
        elif self.votes is None:
            out["note"] = f"more than {MAX_VOTE_PASSES} passes: detected_fraction and agreement were not recorded"
        return out
