"""Sliding-window inference with optional mirror TTA, ensembles and NMF component capture.

Windows are stitched by :mod:`LesionFactorizerLib.pipeline.sliding_window`. The predictor returns a
dict — logits plus, for the components model, one map per NMF layer at that layer's resolution —
and each output is stitched at its own scale. Window starts are multiples of the network stride
(the array is padded to a multiple of it and the scan interval is rounded to it), so layer maps
stitch without sub-voxel rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.settings import DEVICES, one_of

# Mirror TTA: identity plus a flip of each spatial axis (4 passes). All 8 flip combinations
# cost twice as much for a marginal gain on these tasks.
LOGITS = "logits"  # the stitched outputs' key; the others are NMF layer names
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))


def resolve_device(name: str):
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is available to torch; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps was requested but Apple MPS is not available; use --device auto or cpu")
    if name not in DEVICES:
        raise UserError(f"unknown device {name!r}; choose {one_of(DEVICES)}")
    return torch.device(name)


def others_running(loadavg: str | None = None) -> int:
    """Processes runnable right now besides this one, from ``/proc/loadavg``'s "running/total"
    field (instantaneous, unlike the 1-minute average, which also counts our own last case).
    0 where it cannot be read (not Linux)."""
    try:
        text = loadavg if loadavg is not None else open("/proc/loadavg").read()
        return max(0, int(text.split()[3].split("/")[0]) - 1)
    except (OSError, IndexError, ValueError):
        return 0


def threads_for_load(default: int, cores: int | None, others: int) -> int:
    """CPU threads for inference on a possibly busy machine: no more than the cores the other
    runnable processes leave free (at least 1). OpenMP threads that outnumber the free cores wait
    at every barrier for a descheduled sibling, so on a loaded machine fewer threads finish sooner.
    The user's ``--threads`` (``OMP_NUM_THREADS``) is never overridden — see :func:`run_inference`."""
    cores = cores or 1
    return max(1, min(default, cores - others))


# The Factorizer's peak working set per window voxel and input channel (measured), in bytes.
WINDOW_BYTES_PER_VOXEL = 600


def auto_sw_batch_size(roi: tuple[int, ...], channels: int, device_type: str, free_bytes: int | None) -> int:
    """Windows per forward pass: small windows run several at a time (tiny ops are dominated by
    per-op overhead and thread synchronisation), large ones one at a time. Bounded by ~1/4 of free
    memory at ~``channels``·600 bytes per window voxel (the Factorizer's peak working set, measured)
    and by 8. The same logits either way: windows are independent samples of the batch."""
    voxels = 1
    for r in roi:
        voxels *= int(r)
    by_size = max(1, (64**3) // voxels) if device_type == "cpu" else max(1, (128**3 * 2) // voxels)
    if free_bytes:
        by_size = min(by_size, max(1, free_bytes // 4 // (voxels * max(1, channels) * WINDOW_BYTES_PER_VOXEL)))
    return int(min(8, by_size))


def default_sw_batch_size(roi: tuple[int, ...], channels: int, dev) -> int:
    """What ``--sw-batch-size`` means when not given: :func:`auto_sw_batch_size` on ``dev``'s
    free memory now. ``--backend auto``'s calibration measures this same batch shape."""
    return auto_sw_batch_size(roi, channels, dev.type, free_memory(dev))


def free_memory(dev) -> int | None:
    import torch

    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class InferenceResult:
    logits: np.ndarray                               # (C_out, k, j, i) on the padded box
    components: dict[str, np.ndarray] = field(default_factory=dict)   # layer → (K, k/s, j/s, i/s)
    strides: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"
    passes: int = 0
    backend: str = "eager"                          # how the network ran (report.json "backend_ran")
    window_nmf: str = "not used"                    # what ran the eager window NMF (nn/native.status)
    threads: int = 0
    sw_batch_size: int = 1
    warnings: list[str] = field(default_factory=list)
    votes: np.ndarray | None = None                 # (k, j, i): bit p set where pass p labelled a lesion


def run_inference(models: list, array: np.ndarray, roi: tuple[int, int, int], *, overlap: float = 0.5,
                  align: int = 16, tta: bool = False, sw_batch_size: int | None = None, device: str = "auto",
                  component_layers: list[str] | None = None, want_components: bool = False,
                  on_window: Callable[[int, int], None] | None = None,
                  foreground: Callable | None = None, backend: str = "auto",
                  on_message: Callable[[str], None] | None = None,
                  average_probabilities: str | None = None,
                  interval: tuple[int, int, int] | None = None) -> InferenceResult:
    """Mean logits of ``models`` (× TTA flips) over sliding windows on ``array`` (C, D, H, W).
    ``average_probabilities`` (``sigmoid`` | ``softmax``): average the passes' probabilities under
    this activation instead (thesis 8.3.6 ensembles); the result is still logits — those of the mean
    probabilities — so every later step is the same.

    ``roi`` and the array's spatial size must be multiples of ``align`` (checked by the caller).
    ``interval``: the distance between window starts (a window plan's, ``pipeline.window_plan``);
    None: ``roi·(1 − overlap)`` rounded down to a multiple of ``align``.
    Components come from the first model that has them, on the un-flipped pass.
    ``sw_batch_size=None`` chooses it from the window size and free memory (:func:`auto_sw_batch_size`).
    On the CPU, unless the user fixed the thread count, threads follow the machine's load
    (:func:`threads_for_load`) for this call.
    ``foreground``: one pass's logits → bool map of where that pass alone labels a lesion
    (:func:`LesionFactorizerLib.pipeline.confidence.pass_foreground`); with it and more than one
    pass, ``votes`` records one bit per pass (pass agreement without keeping any pass's logits).
    ``backend`` (auto/eager/compile/onnx) is how the
    passes without components run (``pipeline.backends``); ``on_message`` hears what it is doing
    (e.g. compiling) before it takes time.
    """
    import torch

    dev = resolve_device(device)
    result = InferenceResult(np.empty(0), device=str(dev))
    if sw_batch_size is None:
        sw_batch_size = default_sw_batch_size(roi, array.shape[0], dev)
    result.sw_batch_size = sw_batch_size
    threads_before = torch.get_num_threads()
    if dev.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads_for_load(threads_before, os.cpu_count(), others_running()))
    result.threads = torch.get_num_threads()
    try:
        from LesionFactorizerLib.pipeline.backends import Dispatch
        from LesionFactorizerLib.pipeline.window_plan import sliding_plan

        runners = Dispatch(backend, sw_batch_size, on_message, result.warnings)
        if interval is None:
            interval = sliding_plan(tuple(array.shape[1:]), roi, overlap, align).interval
        return _run(models, array, roi, interval, tta, sw_batch_size, dev, component_layers,
                    want_components, on_window, result, runners, foreground, average_probabilities)
    finally:
        torch.set_num_threads(threads_before)


def to_probabilities(logits, activation: str):
    import torch

    return torch.sigmoid(logits) if activation == "sigmoid" else torch.softmax(logits, dim=1)


def to_logits(probs, activation: str):
    """Logits whose activation gives ``probs`` back (softmax: up to a per-voxel constant, which
    softmax ignores); clamped so that a probability of exactly 0 or 1 stays finite."""
    import torch

    p = probs.clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p) if activation == "sigmoid" else torch.log(p)


def _run(models, array, roi, interval, tta, sw_batch_size, dev, component_layers, want_components,
         on_window, result: InferenceResult, runners, foreground=None, average_probabilities=None) -> InferenceResult:
    import torch

    from LesionFactorizerLib.nn import native
    from LesionFactorizerLib.pipeline.sliding_window import stitch, window_starts

    size = tuple(array.shape[1:])
    flips = TTA_FLIPS if tta else ((),)
    comp_model = next((m for m in models if getattr(m, "has_components", False)), None) if want_components else None
    n_windows = len(window_starts(size, roi, interval))
    total = n_windows * len(models) * len(flips)
    done = [0]
    x_cpu = torch.from_numpy(array).unsqueeze(0)
    acc: torch.Tensor | None = None
    votes = _VoteBits(len(models) * len(flips)) if foreground is not None else None

    def make_predictor(model, with_components: bool):
        def predictor(batch):
            with torch.no_grad():
                if with_components:
                    logits, comps = model.forward_with_components(batch, component_layers)
                    out = {LOGITS: logits.float()}
                    out.update({k: v.float() for k, v in comps.items()})
                    runners.used_eager()   # components are captured by the eager forward only
                else:
                    out = {LOGITS: runners.forward(model, batch).float()}
            done[0] += batch.shape[0]
            if on_window:
                on_window(min(done[0], total), total)
            return out
        return predictor

    def one_pass(model, flip, with_components, dev):
        x = x_cpu.flip(flip) if flip else x_cpu
        return stitch(x, roi, interval, sw_batch_size, make_predictor(model, with_components), dev)

    for model in models:
        for flip in flips:
            with_components = model is comp_model and flip == ()
            start_done = done[0]
            try:
                model.to(dev)
                out = one_pass(model, flip, with_components, dev)
            except RuntimeError as exc:
                if dev.type == "cpu" or not _is_oom(exc):
                    raise
                torch.cuda.empty_cache() if dev.type == "cuda" else None
                result.warnings.append(f"{dev.type.upper()} ran out of memory; fell back to the CPU (slower)")
                dev = torch.device("cpu")
                result.device = "cpu (fallback after GPU out of memory)"
                # a batch sized from free GPU memory can be far too big for RAM: size it again
                sw_batch_size = default_sw_batch_size(roi, array.shape[0], dev)
                runners.batch_size = result.sw_batch_size = sw_batch_size
                done[0] = start_done
                model.to(dev)
                out = one_pass(model, flip, with_components, dev)
            logits = out[LOGITS]
            if flip:
                logits = logits.flip(flip)
            if votes is not None:
                votes.add(foreground(logits), result.passes)
            if average_probabilities:
                logits = to_probabilities(logits, average_probabilities)
            acc = logits if acc is None else acc.add_(logits)
            result.passes += 1
            if with_components:
                strides = dict(model.component_layers)
                for key, value in out.items():
                    if key != LOGITS:
                        result.components[key] = value[0].numpy()
                        result.strides[key] = strides[key]
            del out
    acc /= result.passes
    if average_probabilities:
        acc = to_logits(acc, average_probabilities)
    result.logits = acc[0].numpy()
    result.votes = votes.bits if votes is not None else None
    result.backend = runners.summary()
    result.window_nmf = native.status()
    if native.warning() and native.warning() not in result.warnings:   # e.g. a cache it refused
        result.warnings.append(native.warning())
    for model in models:
        model.to("cpu")
    return result


class _VoteBits:
    """One bit per pass per voxel, set where that pass labels a lesion; None when one pass (nothing
    to agree on) or more passes than bits in a uint64."""

    def __init__(self, passes: int):
        from LesionFactorizerLib.pipeline.confidence import vote_dtype

        self.dtype = vote_dtype(passes) if passes > 1 else None
        self.bits: np.ndarray | None = None

    def add(self, mask, index: int) -> None:
        if self.dtype is None:
            return
        mask = mask.cpu().numpy()
        if self.bits is None:
            self.bits = np.zeros(mask.shape, dtype=self.dtype)
        np.bitwise_or(self.bits, self.dtype(1 << index), out=self.bits, where=mask)


def trained_nmf_iters(model) -> int | None:
    """The NMF iterations a Factorizer was built (and trained) with: its config's ``nmf_iters``,
    else the architecture's default for that argument."""
    import inspect

    kwargs = (getattr(model, "config", None) or {}).get("kwargs", {})
    if kwargs.get("nmf_iters") is not None:
        return int(kwargs["nmf_iters"])
    try:
        param = inspect.signature(type(model)).parameters.get("nmf_iters")
    except (TypeError, ValueError):
        return None
    if param is None or param.default is inspect.Parameter.empty or param.default is None:
        return None
    return int(param.default)


def apply_nmf_settings(models: list, iters: int | None, skip: list[str] | None) -> None:
    """Set the NMF iterations (None: the trained value) and short-circuited layers of every
    Factorizer. Both are always set, because ``batch`` reuses the models across cases and an
    earlier case's settings must not leak into the next."""
    for model in models:
        if not getattr(model, "has_components", False):
            continue
        model.set_nmf(iters=iters if iters is not None else trained_nmf_iters(model), skip=list(skip or []))
