"""Checks a run makes on its own arithmetic: enough memory before allocating, finite network output.

"Enough memory" is the least of the machine's RAM, the process's address-space limit and its
cgroup's limit (a scheduler's), and it is checked from the image headers, before any voxel is read.

Both turn what would be a crash deep inside SimpleITK/torch ("array is too big", an
out-of-memory kill) or a silently wrong result (NaN probabilities thresholded to "no lesion")
into one clear error.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from LesionFactorizerLib.core.errors import UserError


def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where it cannot be asked."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _proc_status_bytes(field: str) -> int:
    """A ``VmSize``/``VmRSS`` line of this process's status, in bytes (0 where not available)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cgroup_memory_limit(proc: str = "/proc") -> int | None:
    """The tightest memory limit of the cgroups this process is in (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``, each cgroup and its parents up to the mount), or None.

    A scheduler (SLURM, Kubernetes, systemd) kills a job that crosses it, whatever the machine's
    RAM: so a case is sized against it, not against the RAM."""
    try:
        groups = Path(proc, "self", "cgroup").read_text().splitlines()
        mounts = Path(proc, "self", "mountinfo").read_text().splitlines()
    except OSError:
        return None
    wanted = {}   # mount kind → this process's cgroup path in that hierarchy
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1] == "":
            wanted["cgroup2"] = parts[2]
        elif len(parts) == 3 and "memory" in parts[1].split(","):
            wanted["cgroup"] = parts[2]
    limits = []
    for line in mounts:   # "id parent dev root mountpoint options … - fstype source superoptions"
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in wanted:
            continue
        kind, root, mount = tail[0], fields[3], fields[4]
        if kind == "cgroup" and "memory" not in tail[2].split(","):
            continue
        own = wanted[kind]
        rel = os.path.relpath(own, root) if own.startswith(root) else "."
        name = "memory.max" if kind == "cgroup2" else "memory.limit_in_bytes"
        folder = Path(mount, rel).resolve()
        while True:
            try:
                text = (folder / name).read_text().strip()
                if text != "max" and int(text) < 1 << 60:   # v1 reports "no limit" as a huge number
                    limits.append(int(text))
            except (OSError, ValueError):
                pass
            if folder == Path(mount).resolve() or folder == folder.parent:
                break
            folder = folder.parent
    return min(limits) if limits else None


def memory_available() -> tuple[int, str] | None:
    """The most memory this process can still allocate, and what sets that bound: the machine's RAM,
    the process's address-space limit (``ulimit -v``, ``RLIMIT_AS``: what it has mapped already is
    subtracted) or its cgroup's memory limit (its resident memory subtracted); None if unknown."""
    bounds = []
    ram = physical_memory()
    if ram:
        bounds.append((ram, f"this machine's {ram / 2**30:.3g} GiB"))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        unlimited = soft == resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError, AttributeError):   # not POSIX
        soft, unlimited = 0, True
    if not unlimited:
        bounds.append((soft - _proc_status_bytes("VmSize"),
                       f"the process's address-space limit (ulimit -v) of {soft / 2**30:.3g} GiB"))
    group = cgroup_memory_limit()
    if group is not None:
        bounds.append((group - _proc_status_bytes("VmRSS"), f"the cgroup memory limit of {group / 2**30:.3g} GiB "
                                                              "(memory.max / memory.limit_in_bytes)"))
    return min(bounds) if bounds else None


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
    """Refuse a case that cannot fit in the memory this process may use, before anything large is
    allocated (the caller has only read image headers)."""
    need, grid = estimate_case_bytes(size, spacing, model_spacing, n_inputs, n_outputs)
    at = f"the model's spacing {model_spacing} mm" if model_spacing else "the input's own spacing"
    refuse_beyond(need, f"{where} needs at least {need / 2**30:.3g} GiB of memory (model grid "
                        f"{'x'.join(map(str, grid))} voxels at {at})",
                  "check the voxel sizes of the input and the model's spacing")


def refuse_beyond(need: int, what: str, advice: str) -> None:
    """One line naming the bound when ``need`` bytes cannot be had (:func:`memory_available`)."""
    have = memory_available()
    if have is not None and need > have[0]:
        raise UserError(f"{what}, more than the {max(have[0], 0) / 2**30:.3g} GiB this process can allocate "
                        f"(bound by {have[1]}); {advice}, or run where more memory is allowed")


def check_finite_logits(logits, model_names: list[str]) -> None:
    """Network output with NaN/inf would threshold to "no lesion" with exit 0: refuse it."""
    values = logits.numpy() if hasattr(logits, "numpy") else np.asarray(logits)
    finite = np.isfinite(values)
    if not finite.all():
        bad = values.size - int(np.count_nonzero(finite))
        raise UserError(f"model {', '.join(model_names)} produced {bad} NaN or infinite output values "
                        f"({bad / values.size:.0%} of the image); the result would be meaningless: check the "
                        "model file (`lesion-factorizer models verify`) and the inputs")
