"""Which windows a network runs over the padded foreground box: the window plan.

``sliding``: windows of the trained patch size every ``(1 − overlap)`` of it (MONAI's scheme).
At overlap 0.5 on a BraTS-size box that is 8 windows of 128³ for a 144×176×144 box: each voxel
is computed ~4.6 times.

``whole``: the fewest windows that fit the memory budget and hold at most
:data:`CONTEXT_PATCHES` trained patches' worth of voxels — the whole box in one window when it
fits — with a small overlap (one network stride) where it takes several. The context cap keeps a
window close to what the network was trained on: a BraTS-size box (144×176×144, 1.7 patches of
128³) runs in one window, while a demo model trained on 32³ patches gets several 2-patch windows
instead of one 20-patch window (measured: agreement with the sliding window drops there). That is only the same
computation where the network is window-local: a Swin/Local Factorizer (its NMF works inside
fixed-size windows at every level) or a convolutional net without window-wide statistics. A
Global Factorizer's NMF, or a GroupNorm U-Net's normalisation, sees the whole window, so a larger
window is a different computation: those models keep the sliding window (:func:`window_local`).
A Factorizer's bridge position embedding is resized to the grid it runs on, as it already is for
any window other than the trained one; the agreement of the two plans is measured, not assumed
(``benchmarks/bench_window_plan.py``, README "Window plans").

Window starts are multiples of the network stride in both plans, so every NMF layer's component
maps stitch on their own grid (:mod:`LesionFactorizerLib.pipeline.sliding_window`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from LesionFactorizerLib.pipeline.sliding_window import window_starts
from LesionFactorizerLib.core.speed_presets import WINDOW_PLANS

# Peak working set of a forward pass per window voxel, per channel of the network's first level,
# in bytes (fp32 maps: the Factorizer keeps ~7 full-resolution maps of that width, plus the
# input and logits). Measured on swin-factorizer-brats (README "Window plans").
BYTES_PER_VOXEL_CHANNEL = 21
# What one window may take: with the case's own arrays this keeps a BraTS-size case under 4 GB.
WINDOW_BUDGET_BYTES = 5 * 2**29
# The most voxels one window may hold, in trained patches (README "Window plans" has the measurements).
CONTEXT_PATCHES = 2
MAX_SPLIT = 16


@dataclass(frozen=True)
class WindowPlan:
    kind: str                        # what ran: "sliding" or "whole"
    roi: tuple[int, int, int]        # window size, numpy order (k, j, i)
    interval: tuple[int, int, int]   # distance between window starts, numpy order
    windows: int
    requested: str                   # what the settings asked for
    note: str = ""                   # why a requested "whole" plan fell back to sliding

    def record(self) -> dict:
        """report.json ``settings.window_plan`` (sizes in (i, j, k) order, like ``roi``)."""
        entry = {"kind": self.kind, "requested": self.requested, "window": list(reversed(self.roi)),
                 "step": list(reversed(self.interval)), "windows": self.windows}
        if self.note:
            entry["note"] = self.note
        return entry


def sliding_plan(size: tuple[int, ...], roi: tuple[int, ...], overlap: float, align: int,
                 requested: str = "sliding", note: str = "") -> WindowPlan:
    """Windows of ``roi`` every ``(1 − overlap)·roi``, rounded down to a multiple of ``align``."""
    interval = tuple(max(align, (int(r * (1 - overlap)) // align) * align) for r in roi)
    return WindowPlan("sliding", tuple(roi), interval, len(window_starts(size, roi, interval)), requested, note)


def fewest_windows(size: tuple[int, ...], max_voxels: int, align: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(roi, interval) of the fewest windows of at most ``max_voxels`` that cover ``size`` (a
    multiple of ``align`` per axis), neighbours overlapping by ``align``; among plans with as many
    windows, the one computing the fewest voxels. None if none fits with at most
    :data:`MAX_SPLIT` windows per axis (a stride-1 network would otherwise be searched voxel by voxel)."""
    best = None
    counts = [range(1, min(s // align, MAX_SPLIT) + 1) for s in size]
    for split in itertools.product(*counts):
        roi = tuple(_axis_window(s, n, align) for s, n in zip(size, split))
        if math.prod(roi) > max_voxels:
            continue
        key = (math.prod(split), math.prod(split) * math.prod(roi))
        if best is None or key < best[0]:
            best = (key, roi)
    if best is None:
        return None
    roi = best[1]
    return roi, tuple(r - align if r < s else r for r, s in zip(roi, size))


def _axis_window(size: int, count: int, align: int) -> int:
    """The window length that lets ``count`` windows overlapping by ``align`` cover ``size``."""
    if count == 1:
        return size
    return min(size, math.ceil((size + (count - 1) * align) / count / align) * align)


def window_local(model) -> bool:
    """Whether ``model``'s output at a voxel depends only on a neighbourhood of it (so a larger
    window computes the same function): Swin/Local Factorizers and nets that declare it."""
    if getattr(model, "has_components", False):
        return (getattr(model, "config", None) or {}).get("kwargs", {}).get("matricize", "swin") in ("swin", "local")
    return bool(getattr(model, "window_local", False))


def window_budget_voxels(models: list, budget_bytes: int = WINDOW_BUDGET_BYTES) -> int:
    """Window voxels one forward pass may take within ``budget_bytes``, for the widest first level."""
    width = max(int(getattr(m, "widths", (32,))[0]) for m in models)
    return budget_bytes // (BYTES_PER_VOXEL_CHANNEL * width)


def make_plan(requested: str, models: list, size: tuple[int, ...], roi: tuple[int, ...], overlap: float,
              align: int, budget_bytes: int = WINDOW_BUDGET_BYTES) -> WindowPlan:
    """The plan for ``requested`` on a padded box of ``size`` (numpy order), ``roi`` the trained
    patch (clipped to the box). ``whole`` falls back to ``sliding`` (with a note) where a model is
    not window-local or the budget allows fewer voxels than the trained patch."""
    if requested not in WINDOW_PLANS:
        raise ValueError(f"unknown window plan {requested!r}; choose one of {', '.join(WINDOW_PLANS)}")
    if requested == "sliding":
        return sliding_plan(size, roi, overlap, align)
    not_local = [getattr(m, "config", {}).get("architecture", type(m).__name__) for m in models if not window_local(m)]
    if not_local:
        return sliding_plan(size, roi, overlap, align, requested,
                            f"{', '.join(not_local)} is not window-local (its output depends on the window's extent)")
    limit = min(window_budget_voxels(models, budget_bytes), CONTEXT_PATCHES * math.prod(roi))
    planned = fewest_windows(size, limit, align) if limit >= math.prod(roi) else None
    if planned is None:
        return sliding_plan(size, roi, overlap, align, requested,
                            f"the memory budget ({budget_bytes / 2**30:.3g} GiB) allows no window larger than the patch")
    big, interval = planned
    sliding = sliding_plan(size, roi, overlap, align)
    if sliding.windows <= len(window_starts(size, big, interval)):
        return WindowPlan("sliding", sliding.roi, sliding.interval, sliding.windows, requested,
                          "the sliding window already needs no more windows")
    return WindowPlan("whole", big, interval, len(window_starts(size, big, interval)), requested)
