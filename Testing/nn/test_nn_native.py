"""The compiled window-NMF kernel (nn/native.py): the same sub-block output and component maps as
the definition (matricize → NMF → reconstruct → project) and as the PyTorch window path; by
default only a prebuilt library is used and no compiler is ever run; the developer opt-in
(LESION_FACTORIZER_NATIVE=build) builds it once per machine into the cache, with a clean fallback
when it cannot be built or is turned off: test_nn_native_cache_trust.py, with the cache's trust rules."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from LesionFactorizerLib.nn import native
from LesionFactorizerLib.nn.matricize import make_matricize
from LesionFactorizerLib.nn.nmf import NMF


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """The kernel in this process: the prebuilt one, else (the developer opt-in) one built into a
    fresh cache."""
    monkeypatch.setenv("LESION_FACTORIZER_NATIVE", "build")
    monkeypatch.setenv("LESION_FACTORIZER_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    if native.library() is None:
        assert native._compiler() is None, native.status()   # with a compiler it must load
        pytest.skip(native.status())
    assert native.status().startswith("native (")
    return native.library()


@pytest.mark.parametrize("kind", ["local", "swin"])
# E = 8 and 4 have vector moments, E = 8 a vector output pass (its own copies for 32 and 64
# channels, 4 and 8 heads); E = 3 takes the generic loops
@pytest.mark.parametrize("head_dim, heads", [(8, 3), (8, 4), (8, 8), (4, 3), (3, 3)])
@pytest.mark.parametrize("drop", [None, 1])
def test_kernel_equals_the_definition_and_the_pytorch_path(kind, head_dim, heads, drop, kernel, monkeypatch):
    window = 4
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


@pytest.mark.slow
def test_by_default_no_compiler_is_run(tmp_path):
    """Only a prebuilt library is loaded unless a developer opts in: a `cc` first on PATH (and in
    CC) that records being run is never run, and nothing is written to the cache."""
    marker = tmp_path / "cc-ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("cc", "gcc", "clang"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho ran > {marker}\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    for env in ({}, {"LESION_FACTORIZER_NATIVE": "1"}):
        status, _ = _status(tmp_path / "cache", PATH=path, CC=str(bin_dir / "cc"), **env)
        assert status.startswith(("native (prebuilt", "pytorch (no prebuilt kernel")), status
        assert not marker.exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tensors_the_kernel_cannot_take_never_look_for_it(dtype, monkeypatch):
    """A GPU run (here the meta device, which has the same role: not the CPU) or a half-precision
    one decides before the library is looked for, so it never loads or compiles anything."""
    monkeypatch.setattr(native, "_state", {})
    device = "meta" if dtype == torch.float32 else "cpu"
    z = torch.zeros(1, 8, 8, 8, 8, device=device, dtype=dtype)
    taken = native.window_nmf_rank1(z, torch.zeros_like(z), None, heads=2, window=4, shift=0,
                                    weight=torch.zeros(8, 8, device=device, dtype=dtype),
                                    v0=torch.zeros(64, device=device, dtype=dtype), iters=2, eps=1e-8,
                                    scale=1.0, drop_head=None)
    assert taken is False and native.status() == "not used"


@pytest.mark.parametrize("channels", [32, 64, 8, 12])   # multiples of 8 have vector code; 12 the generic loop
def test_layer_norm_kernel_equals_pytorchs(channels, kernel):
    gen = torch.Generator().manual_seed(channels)
    norm = torch.nn.LayerNorm(channels)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0, generator=gen)
        norm.bias.normal_(generator=gen)
        x = torch.randn(777, channels, generator=gen) * 3 + 5   # rows far from zero mean
        out = torch.full_like(x, float("nan"))
        assert native.layer_norm_rows(x, norm.weight, norm.bias, norm.eps, out)
        torch.testing.assert_close(out, norm(x), rtol=1e-5, atol=2e-6)


def test_layer_norm_rows_the_kernel_cannot_take_are_left_to_pytorch(kernel):
    x = torch.randn(16, 32)
    weight, bias = torch.ones(32), torch.zeros(32)
    for args in [(x.t().contiguous().t(), weight, bias), (x.double(), weight.double(), bias.double()),
                 (x, weight, None), (x, torch.ones(16), bias)]:
        out = torch.zeros_like(args[0])
        assert native.layer_norm_rows(args[0], args[1], args[2], 1e-5, out) is False
        assert not out.any()   # untouched
