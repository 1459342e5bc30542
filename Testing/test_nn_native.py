"""The compiled window-NMF kernel (nn/native.py): the same sub-block output and component maps as
the definition (matricize → NMF → reconstruct → project) and as the PyTorch window path, built once
per machine into the cache, and a clean fallback when it cannot be built or is turned off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from LesionFactorizerLib.nn import native
from LesionFactorizerLib.nn.matricize import make_matricize
from LesionFactorizerLib.nn.nmf import NMF


def test_the_kernel_is_built_wherever_a_compiler_is():
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine: the PyTorch window path runs")
    assert native.library() is not None, native.status()
    assert native.status().startswith("native (")


@pytest.mark.parametrize("kind", ["local", "swin"])
@pytest.mark.parametrize("head_dim", [8, 4, 3])  # 8 and 4 have vector code; 3 takes the generic loop
@pytest.mark.parametrize("drop", [None, 1])
def test_kernel_equals_the_definition_and_the_pytorch_path(kind, head_dim, drop, monkeypatch):
    if native.library() is None:
        pytest.skip(native.status())
    heads, window = 3, 4
    c = heads * head_dim
    gen = torch.Generator().manual_seed(head_dim)
    z = torch.rand(2, 9, 12, 7, c, generator=gen)        # padded to 12×12×8: rolled windows wrap
    weight = torch.randn(c, c, generator=gen)
    start = torch.randn(2, 9, 12, 7, c, generator=gen)
    nmf = NMF(rank=1, iters=4, seed=5)
    nmf.drop = None if drop is None else (heads, drop)
    mat = make_matricize(kind, head_dim, window)

    mats, lay = mat.matricize(z)
    u, v = nmf.decompose(mats)
    expected = start + mat.reconstruct(u, v, lay) @ weight.t()
    expected_maps = mat.factor_maps(v, lay)

    out_native = start.clone()
    maps_native = mat.add_projected(z, nmf, weight, out_native, capture=True)
    monkeypatch.setattr(native, "library", lambda: None)  # the PyTorch window path
    out_torch = start.clone()
    maps_torch = mat.add_projected(z, nmf, weight, out_torch, capture=True)
    for out, maps in ((out_native, maps_native), (out_torch, maps_torch)):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(maps, expected_maps, rtol=1e-5, atol=1e-6)
    assert (out_native - start).abs().max() > 0.1   # the sub-block did contribute


def test_other_ranks_and_solvers_run_the_pytorch_path():
    z = torch.rand(1, 8, 8, 8, 8)
    weight = torch.randn(8, 8)
    mat = make_matricize("swin", 4, 4)
    for nmf in (NMF(rank=2, iters=3), NMF(rank=1, iters=3, solver="mu")):
        mats, lay = mat.matricize(z)
        u, v = nmf.decompose(mats)
        out = torch.zeros_like(z)
        maps = mat.add_projected(z, nmf, weight, out, capture=True)
        torch.testing.assert_close(out, mat.reconstruct(u, v, lay) @ weight.t(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(maps, mat.factor_maps(v, lay), rtol=1e-5, atol=1e-6)


def _status(cache, **env) -> list[str]:
    code = ("from LesionFactorizerLib.nn import native; native.library(); "
            "print(native.status()); print(native._state.get('path', '-'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "LESION_FACTORIZER_CACHE": str(cache), **env})
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()


def test_built_once_into_the_cache_and_failures_fall_back(tmp_path):
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    status, path = _status(tmp_path)
    assert status.startswith("native (")
    (built,) = (tmp_path / "native").iterdir()
    assert str(built) == path
    stamp = built.stat().st_mtime_ns
    assert _status(tmp_path) == [status, path]           # a later process loads it, no rebuild
    assert built.stat().st_mtime_ns == stamp

    status, _ = _status(tmp_path, CC="false")            # a compiler that fails
    assert status.startswith("pytorch (building it with") and "false" in status
    assert list((tmp_path / "native").iterdir()) == [built]   # nothing half-written left behind
    assert _status(tmp_path, LESION_FACTORIZER_NATIVE="0")[0] == "pytorch (turned off by LESION_FACTORIZER_NATIVE=0)"
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    assert _status(blocked)[0].startswith("pytorch (building it with")   # an unwritable cache folder
