"""Checks a run makes on its own arithmetic: enough memory before allocating, finite network output.

Both turn what would be a crash deep inside SimpleITK/torch ("array is too big", an
out-of-memory kill) or a silently wrong result (NaN probabilities thresholded to "no lesion")
into one clear error.
"""

from __future__ import annotations

import math
import os

import numpy as np

from LesionFactorizerLib.errors import UserError


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where it cannot be asked."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def estimate_case_bytes(size: tuple[int, ...], spacing: tuple[float, ...], model_spacing, n_inputs: int,
                        n_outputs: int) -> tuple[int, tuple[int, ...]]:
    """A lower bound of the memory a case needs, and the model grid it implies (voxels per axis).

    On the reference grid: the inputs, probabilities and labels; on the model grid (the whole
    image resampled to the model's spacing, before the foreground crop): the inputs and the
    accumulated logits with their weights.
    """
    if model_spacing:
        grid = tuple(max(1, math.ceil(n * s / m)) for n, s, m in zip(size, spacing, model_spacing))
    else:
        grid = tuple(size)
    ref = math.prod(size)
    model = math.prod(grid)
    return 4 * (ref * (n_inputs + n_outputs + 1) + model * (n_inputs + 2 * n_outputs)), grid


def check_memory(size, spacing, model_spacing, n_inputs: int, n_outputs: int, where: str) -> None:
    """Refuse a case that cannot fit in this machine's memory, before anything large is allocated."""
    need, grid = estimate_case_bytes(size, spacing, model_spacing, n_inputs, n_outputs)
    have = physical_memory()
    if have is not None and need > have:
        raise UserError(f"{where} needs at least {need / 2**30:.3g} GiB of memory (model grid "
                        f"{'x'.join(map(str, grid))} voxels at the model's spacing {model_spacing} mm), more than this "
                        f"machine's {have / 2**30:.3g} GiB; check the voxel sizes of the input and the model's spacing")


def check_finite_logits(logits, model_names: list[str]) -> None:
    """Network output with NaN/inf would threshold to "no lesion" with exit 0: refuse it."""
    values = logits.numpy() if hasattr(logits, "numpy") else np.asarray(logits)
    finite = np.isfinite(values)
    if not finite.all():
        bad = values.size - int(np.count_nonzero(finite))
        raise UserError(f"model {', '.join(model_names)} produced {bad} NaN or infinite output values "
                        f"({bad / values.size:.0%} of the image); the result would be meaningless: check the "
                        "model file (`lesion-factorizer models verify`) and the inputs")
