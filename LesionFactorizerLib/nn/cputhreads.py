"""Worker threads that each run PyTorch single-threaded, for row-parallel CPU work.

The Factorizer block's memory-saving path is hundreds of small operators per block (layer norm,
1×1 products, GELU on cache-sized runs of voxels). Left to PyTorch's own threads, every one of
them ends in a barrier where the threads wait for each other, spinning. When another program
holds one of the cores (a reader's browser or PACS viewer), the thread waiting there spins
through its time slice at every barrier: beside two busy neighbours on two cores, a forward took
several times longer, where a network of a few large convolutions lost less. Here each worker
thread runs its own contiguous share of the rows end to end, with PyTorch single-threaded inside
it, and the threads meet once per loop: a preempted thread delays only its own share.

The same workers run the window-NMF kernel (``nn/native.py``), whose ctypes calls release the GIL.

PyTorch's thread count is per thread here, but setting it also sets the default that threads
started later take: :func:`_workers` sets 1 in each worker, then restores the caller's count.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}   # by worker count; a count in use is never shut down
_pid = os.getpid()   # a forked child has none of its parent's threads: it starts its own


def _workers(count: int) -> ThreadPoolExecutor:
    global _pid
    with _lock:
        if _pid != os.getpid():
            _pools.clear()
            _pid = os.getpid()
        if count in _pools:
            return _pools[count]
        threads = torch.get_num_threads()
        started = threading.Barrier(count + 1)

        def single_threaded():
            # A thread's first query takes the process default as its own count; made first, so
            # that the default restored below never replaces this thread's 1 later.
            torch.get_num_threads()
            torch.set_num_threads(1)
            started.wait()

        pool = ThreadPoolExecutor(count, thread_name_prefix="lf-cpu", initializer=single_threaded)
        for _ in range(count):   # no worker is idle yet, so each submission starts one
            pool.submit(lambda: None)
        started.wait()
        torch.set_num_threads(threads)   # the default for threads started later, and this one's
        _pools[count] = pool
        return pool


def map_ranges(n: int, fn: Callable[[int, int], T], parts: int | None = None) -> list[T]:
    """``fn(start, stop)`` for ``parts`` contiguous ranges covering ``range(n)`` (default: PyTorch's
    thread count; at most ``n``) on the worker threads, under the caller's grad and inference
    modes; the results in order. With one part, ``fn`` runs here on the whole range."""
    parts = max(1, min(torch.get_num_threads() if parts is None else parts, n))
    if parts == 1:
        return [fn(0, n)]
    bounds = [n * i // parts for i in range(parts + 1)]
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(i: int) -> T:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(bounds[i], bounds[i + 1])

    return list(_workers(parts).map(run, range(parts)))
