"""How our own processes (the CLI, the Slicer worker, benchmarks) get memory for large tensors.

Torch's CPU allocator has no cache: every feature map is a fresh ``malloc`` and, at hundreds of
MB, glibc serves each one with a new ``mmap`` that the kernel must fault in and zero page by
page, then ``munmap`` on free. One 128³ window allocates several GB this way. Two settings, both
only for processes we own (a library import never changes its host's allocator):

* torch backs large tensors with transparent huge pages (``THP_MEM_ALLOC_ENABLE``; read once,
  when torch is imported): fewer, cheaper page faults when a large tensor is first filled;
* glibc keeps freed blocks of up to 1 GiB in its heap (``mallopt``) so the next window reuses
  memory already faulted in: less system time and faster inference for a higher peak RSS (freed
  memory is kept, not returned); ``benchmarks/bench_pipeline.py`` measures both, README the numbers.

The user's own choice wins: ``THP_MEM_ALLOC_ENABLE=0``, ``GLIBC_TUNABLES`` or glibc's
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` leave the matching setting alone.
Torch-free: called before torch is imported.
"""

from __future__ import annotations

import ctypes
import os
import sys

KEEP_BYTES = 1 << 30          # blocks up to this size come from (and return to) the heap
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameter numbers
USER_MALLOC_VARS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def configure_process_memory() -> str:
    """Apply both settings where they apply; returns what was done (for benchmarks' output)."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    done = [f"huge pages {'on' if os.environ['THP_MEM_ALLOC_ENABLE'] == '1' else 'off'}"]
    done.append(_keep_freed_blocks())
    return ", ".join(done)


def _keep_freed_blocks() -> str:
    if not sys.platform.startswith("linux"):
        return "malloc default (not Linux)"
    if any(name in os.environ for name in USER_MALLOC_VARS):
        return "malloc as set by the environment"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "malloc default (no mallopt)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # musl and other C libraries answer 0 (not applied) rather than failing
    if mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES) and mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES):
        return f"malloc keeps freed blocks ≤ {KEEP_BYTES >> 20} MiB"
    return "malloc default (mallopt refused)"
