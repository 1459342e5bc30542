"""nn/cputhreads.py: row ranges on worker threads that run PyTorch single-threaded, while the caller
keeps its own thread count; the Factorizer block's rows split that way compute what the plain
forward computes."""

from __future__ import annotations

import multiprocessing
import sys
import threading

import pytest
import torch

from LesionFactorizerLib.nn import cputhreads
from LesionFactorizerLib.nn.factorizer import plain_forward
from LesionFactorizerLib.presets import build_model


@pytest.fixture
def threads():
    """Sets PyTorch's thread count for the test and restores it after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_ranges_cover_every_item_once_in_order():
    assert cputhreads.map_ranges(10, lambda a, b: (a, b), parts=3) == [(0, 3), (3, 6), (6, 10)]
    assert cputhreads.map_ranges(2, lambda a, b: (a, b), parts=4) == [(0, 1), (1, 2)]
    here = threading.get_ident()
    assert cputhreads.map_ranges(5, lambda a, b: (a, b, threading.get_ident()), parts=1) == [(0, 5, here)]


def test_workers_run_torch_single_threaded_and_the_caller_keeps_its_count(threads):
    threads(2)
    seen = cputhreads.map_ranges(2, lambda a, b: (torch.get_num_threads(), threading.get_ident()), parts=2)
    assert [count for count, _ in seen] == [1, 1]
    assert threading.get_ident() not in {ident for _, ident in seen}
    assert torch.get_num_threads() == 2
    later = []   # a thread started afterwards takes the caller's count, not the workers'
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [2]


def test_the_callers_grad_and_inference_modes_reach_the_workers():
    with torch.inference_mode():
        buf = torch.zeros(6)   # an inference tensor: updating it outside inference mode raises
        cputhreads.map_ranges(6, lambda a, b: buf[a:b].add_(1), parts=2)
    assert buf.tolist() == [1.0] * 6
    weight = torch.ones(3, requires_grad=True)
    with torch.no_grad():
        assert cputhreads.map_ranges(2, lambda a, b: (weight * 2).requires_grad, parts=2) == [False, False]
    assert cputhreads.map_ranges(2, lambda a, b: (weight * 2).requires_grad, parts=2) == [True, True]


def test_an_error_in_a_worker_reaches_the_caller():
    def fail(a, b):
        if a > 0:
            raise ValueError("second range")
        return a

    with pytest.raises(ValueError, match="second range"):
        cputhreads.map_ranges(4, fail, parts=2)
    assert cputhreads.map_ranges(4, lambda a, b: b - a, parts=2) == [2, 2]   # the workers still serve


def _child(queue):
    queue.put(cputhreads.map_ranges(4, lambda a, b: (a, b), parts=2))


@pytest.mark.skipif(sys.platform != "linux", reason="fork is the Linux default start method")
def test_a_forked_child_starts_its_own_workers():
    cputhreads.map_ranges(4, lambda a, b: a, parts=2)   # the parent's workers exist before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(60)   # the parent's worker threads do not exist in the child: reusing them would hang
    assert child.exitcode == 0
    assert queue.get(timeout=5) == [(0, 2), (2, 4)]


@pytest.mark.parametrize("count", [3, 1])
def test_block_rows_split_over_threads_match_the_plain_forward(count, threads):
    threads(count)   # 3: shares of unequal size, ending inside a window row
    model = build_model("swin-factorizer-brats", widths=(8, 16, 32, 64, 128)).eval()
    x = torch.randn(1, 4, 19, 16, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        split = model(x)
        with plain_forward(model):
            plain = model(x)
    torch.testing.assert_close(split, plain, rtol=1e-4, atol=1e-4)
