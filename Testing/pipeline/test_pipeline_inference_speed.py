"""Batched sliding windows and the load-aware thread policy change speed, never the result."""

import numpy as np
import pytest
import torch

from LesionFactorizerLib.pipeline.inference import (auto_sw_batch_size, others_running, run_inference,
                                                    threads_for_load)
from LesionFactorizerLib.presets import build_model

pytestmark = pytest.mark.slow


def test_other_runnable_processes_are_read_from_proc_loadavg():
    assert others_running("2.10 1.50 0.90 5/321 4242") == 4   # minus this process
    assert others_running("0.00 0.00 0.00 1/100 7") == 0
    assert others_running("garbage") == 0


def test_threads_shrink_to_the_free_cores_and_never_below_one():
    assert threads_for_load(2, 2, 0) == 2
    assert threads_for_load(2, 2, 1) == 1
    assert threads_for_load(8, 16, 3) == 8   # never more than asked
    assert threads_for_load(2, 2, 6) == 1


def test_small_windows_are_batched_within_free_memory():
    assert auto_sw_batch_size((32, 32, 32), 4, "cpu", None) == 8
    assert auto_sw_batch_size((128, 128, 128), 4, "cpu", None) == 1
    assert auto_sw_batch_size((32, 32, 32), 4, "cpu", 32**3 * 4 * 600 * 4 * 2) == 2  # memory-bound


def test_batched_windows_and_fewer_threads_give_the_same_logits_and_components():
    model = build_model("swin-factorizer-isles", widths=(8, 16, 32, 64, 128)).eval()
    array = np.random.default_rng(0).standard_normal((2, 48, 32, 32)).astype(np.float32)
    kw = dict(overlap=0.5, align=16, want_components=True)
    one = run_inference([model], array, (32, 32, 32), sw_batch_size=1, **kw)
    auto = run_inference([model], array, (32, 32, 32), sw_batch_size=None, **kw)
    assert auto.sw_batch_size > 1 and one.sw_batch_size == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_inference([model], array, (32, 32, 32), sw_batch_size=1, **kw)
    finally:
        torch.set_num_threads(threads)
    for other in (auto, single):
        np.testing.assert_allclose(other.logits, one.logits, rtol=1e-4, atol=1e-5)
        assert other.components.keys() == one.components.keys()
        for name in one.components:
            np.testing.assert_allclose(other.components[name], one.components[name], rtol=1e-4, atol=1e-5)
