"""Sliding-window stitching: a network's outputs over a volume larger than its window.

The same windows and the same stitching as MONAI's ``sliding_window_inference`` in its
``constant`` blend mode (every window weighs 1; overlaps are averaged), so outputs equal what it
gave (tested against it), but without importing MONAI at inference: ``import monai`` costs seconds
of CPU at every worker start — most of a "drop this component" click on the demo models, and far
more wall time on a busy machine.

What it needs is narrower than MONAI's general case, and it checks instead of padding: the window
fits inside the volume, and window starts are multiples of every output's stride, so an output
at 1/s of the input's resolution (an NMF layer's component maps) stitches on its own grid exactly.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch


def axis_starts(size: int, roi: int, interval: int) -> list[int]:
    """Window starts along one axis: every ``interval``, the last one moved back to end at ``size``."""
    if size <= roi:
        return [0]
    count = -(-(size - roi) // interval) + 1
    return [min(n * interval, size - roi) for n in range(count)]


def window_starts(size: tuple[int, ...], roi: tuple[int, ...], interval: tuple[int, ...]) -> list[tuple[int, ...]]:
    """All window corners, last axis fastest (MONAI's order, so batches hold the same windows)."""
    return list(itertools.product(*(axis_starts(s, r, i) for s, r, i in zip(size, roi, interval))))


def stitch(x: torch.Tensor, roi: tuple[int, ...], interval: tuple[int, ...], batch_size: int,
           predictor: Callable[[torch.Tensor], dict[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    """Mean of ``predictor``'s outputs over the windows covering each voxel, per output key.

    ``x``: (1, C, *size) on the CPU. Windows run ``batch_size`` at a time on ``device``; results
    are gathered on the CPU. ``predictor`` returns a dict of (B, C_k, *roi/s_k) tensors; each key
    is stitched at its own resolution 1/s_k.
    """
    size = tuple(x.shape[2:])
    if any(r > s for r, s in zip(roi, size)):
        raise ValueError(f"window {roi} is larger than the volume {size}")
    starts = window_starts(size, roi, interval)
    sums: dict[str, torch.Tensor] = {}
    strides: dict[str, tuple[int, ...]] = {}
    counts: dict[tuple[int, ...], torch.Tensor] = {}
    for first in range(0, len(starts), batch_size):
        corners = starts[first: first + batch_size]
        batch = torch.cat([x[(..., *(slice(c, c + r) for c, r in zip(corner, roi)))] for corner in corners])
        outputs = predictor(batch.to(device))
        for key, out in outputs.items():
            out = out.to("cpu")
            if key not in sums:
                strides[key] = stride = _stride(tuple(out.shape[2:]), roi, key)
                grid = tuple(s // t for s, t in zip(size, stride))
                sums[key] = torch.zeros((1, out.shape[1], *grid), dtype=out.dtype)
                if stride not in counts:
                    counts[stride] = _coverage(starts, roi, grid, stride)
            for n, corner in enumerate(corners):
                sums[key][(0, slice(None), *_region(corner, roi, strides[key]))] += out[n]
    return {key: total.div_(counts[strides[key]]) for key, total in sums.items()}


def _stride(shape: tuple[int, ...], full: tuple[int, ...], key: str) -> tuple[int, ...]:
    """Per-axis integer stride of ``shape`` against ``full``; refuses a resolution that does not divide."""
    if any(n == 0 or f % n for n, f in zip(shape, full)):
        raise ValueError(f"output {key!r} of shape {shape} is not the window {full} at an integer stride")
    return tuple(f // n for n, f in zip(shape, full))


def _coverage(starts: list[tuple[int, ...]], roi: tuple[int, ...], grid: tuple[int, ...],
              stride: tuple[int, ...]) -> torch.Tensor:
    """How many windows cover each voxel of a grid at ``1/stride`` resolution."""
    if any(c % t for corner in starts for c, t in zip(corner, stride)):
        raise ValueError(f"window starts are not multiples of the output stride {stride}")
    count = torch.zeros(grid)
    for corner in starts:
        count[_region(corner, roi, stride)] += 1
    return count


def _region(corner: tuple[int, ...], roi: tuple[int, ...], stride: tuple[int, ...]) -> tuple[slice, ...]:
    """A window's voxels on the grid at ``1/stride`` resolution."""
    return tuple(slice(c // t, (c + r) // t) for c, r, t in zip(corner, roi, stride))
