"""The NMF layer: monotone objective, solver agreement, accuracy vs scikit-learn, gradients."""

import numpy as np
import pytest
import torch

from LesionFactorizerLib.nn.nmf import NMF, _HALF_STEPS, factorize, initial_factors, objective


def _random_nonneg(shape, seed=0, rank=None):
    gen = torch.Generator().manual_seed(seed)
    if rank is None:
        return torch.rand(*shape, generator=gen, dtype=torch.float64)
    *batch, m, n = shape
    u = torch.rand(*batch, m, rank, generator=gen, dtype=torch.float64)
    v = torch.rand(*batch, n, rank, generator=gen, dtype=torch.float64)
    noise = 0.01 * torch.rand(*shape, generator=gen, dtype=torch.float64)
    return u @ v.transpose(-1, -2) + noise


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_objective_never_increases(solver, rank):
    x = _random_nonneg((3, 12, 40), seed=rank)
    values = [objective(x, *factorize(x, rank, iters, solver)) for iters in range(0, 12)]
    for before, after in zip(values, values[1:]):
        assert torch.all(after <= before * (1 + 1e-9) + 1e-12), (solver, rank)
    assert torch.all(values[-1] < values[0] * 0.9)  # and it actually improves


def test_mu_and_hals_agree_at_rank_one():
    x = _random_nonneg((4, 8, 64), seed=1)
    hals = NMF(rank=1, iters=5, solver="hals")(x)
    mu = NMF(rank=1, iters=5, solver="mu")(x)
    torch.testing.assert_close(hals, mu, rtol=1e-5, atol=1e-7)


def test_rank_one_fast_path_equals_column_sweeps():
    """The Gram-matrix closed form must reproduce the plain alternating HALS updates."""
    x = _random_nonneg((5, 8, 100), seed=2)
    u, v = factorize(x, 1, 7, "hals")
    u0, v0 = initial_factors(8, 100, 1, seed=0, dtype=x.dtype)
    uu, vv = u0.expand(5, 8, 1), v0.expand(5, 100, 1)
    for _ in range(7):
        uu = _HALF_STEPS["hals"](x, uu, vv, 1e-8)
        vv = _HALF_STEPS["hals"](x.transpose(-1, -2), vv, uu, 1e-8)
    torch.testing.assert_close(u, uu)
    torch.testing.assert_close(v, vv)


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.slow
def test_relative_error_matches_scikit_learn(rank):
    sklearn = pytest.importorskip("sklearn.decomposition")
    for seed in range(3):
        x = _random_nonneg((30, 80), seed=10 + seed, rank=rank)
        ref = sklearn.NMF(n_components=rank, init="nndsvda", solver="cd", max_iter=1000, tol=1e-7)
        w = ref.fit_transform(x.numpy())
        ref_err = np.linalg.norm(x.numpy() - w @ ref.components_) / np.linalg.norm(x.numpy())
        u, v = factorize(x, rank, iters=500, solver="hals", seed=seed)
        ours = (torch.linalg.norm(x - u @ v.T) / torch.linalg.norm(x)).item()
        assert ours <= ref_err * 1.01, (seed, ours, ref_err)


def test_factors_are_nonnegative_and_shaped():
    x = _random_nonneg((2, 3, 6, 20), seed=3)
    u, v = NMF(rank=2, iters=4).decompose(x)
    assert u.shape == (2, 3, 6, 2) and v.shape == (2, 3, 20, 2)
    assert (u >= 0).all() and (v >= 0).all()


@pytest.mark.parametrize("solver,rank", [("hals", 1), ("hals", 3), ("mu", 2)])
def test_gradients_flow_through_unrolled_iterations(solver, rank):
    x = _random_nonneg((2, 8, 30), seed=4).float().requires_grad_()
    NMF(rank=rank, iters=5, solver=solver)(x).pow(2).sum().backward()
    grad = x.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_truncated_gradient_differs_from_full():
    x = _random_nonneg((2, 8, 30), seed=5).float()
    grads = []
    for grad_iters in (None, 1):
        xi = x.clone().requires_grad_()
        NMF(rank=1, iters=5, grad_iters=grad_iters)(xi).sum().backward()
        grads.append(xi.grad)
    assert torch.isfinite(grads[1]).all() and grads[1].abs().sum() > 0
    assert not torch.allclose(grads[0], grads[1])


def test_initial_factors_are_reproducible_and_seeded():
    a, b = initial_factors(8, 50, 2, seed=3), initial_factors(8, 50, 2, seed=3)
    c = initial_factors(8, 50, 2, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("m,n,rank,seed", [(8, 50, 2, 3), (1, 4096, 1, 17), (4, 1, 3, 0)])
def test_initial_factors_are_torch_generator_values_bit_for_bit(m, n, rank, seed):
    """Every trained model saw ``torch.rand`` from a seeded generator: the tracer-friendly numpy
    reproduction must give exactly those values, or trained models would change their outputs."""
    gen = torch.Generator().manual_seed(seed)
    u_ref = torch.rand(m, rank, generator=gen, dtype=torch.float64)
    v_ref = torch.rand(n, rank, generator=gen, dtype=torch.float64)
    u0, v0 = initial_factors(m, n, rank, seed, dtype=torch.float64)
    assert torch.equal(u0, u_ref) and torch.equal(v0, v_ref)


def test_initial_factors_are_not_shared_mutable_state():
    u0, _ = initial_factors(3, 5, 1, seed=9, dtype=torch.float64)
    u0.zero_()  # a caller writing into its copy must not poison the cache
    assert initial_factors(3, 5, 1, seed=9, dtype=torch.float64)[0].min() > 0


def test_unknown_solver_is_rejected():
    with pytest.raises(ValueError, match="solver"):
        NMF(solver="svd")


def _reference_truncated_rank1(x, v0, iters, grad_steps, eps=1e-8):
    """The authors' loop at R=1, written out: iteration ``it`` (1…T) runs without autograd when
    ``it < T − grad_steps + 1``, so the factors entering iteration T−k+1 are constants; each
    iteration is ``u ← ReLU((Xv + eps)/(vᵀv + eps))``, then ``v`` the same on Xᵀ with the new u."""
    v = v0.expand(*x.shape[:-2], x.shape[-1], 1)
    u = None
    for it in range(1, iters + 1):
        with torch.no_grad() if it < iters - grad_steps + 1 else torch.enable_grad():
            u = torch.relu((x @ v + eps) / (v.transpose(-1, -2) @ v + eps))
            v = torch.relu((x.transpose(-1, -2) @ u + eps) / (u.transpose(-1, -2) @ u + eps))
    return u @ v.transpose(-1, -2)


@pytest.mark.parametrize("iters", [2, 5])
@pytest.mark.parametrize("grad_iters", [1, 2])
def test_rank_one_truncated_gradient_equals_the_reference_truncation(iters, grad_iters):
    x = _random_nonneg((3, 6, 40), seed=6)
    weights = torch.randn(3, 6, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, v0 = initial_factors(6, 40, 1, seed=0, dtype=x.dtype)
    grads, outs = [], []
    for run in (lambda xi: NMF(rank=1, iters=iters, grad_iters=grad_iters)(xi),
                lambda xi: _reference_truncated_rank1(xi, v0, iters, grad_iters)):
        xi = x.clone().requires_grad_()
        out = run(xi)
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append(xi.grad)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)
    if grad_iters < iters:   # the truncation is felt: the full gradient differs
        xi = x.clone().requires_grad_()
        (NMF(rank=1, iters=iters)(xi) * weights).sum().backward()
        assert not torch.allclose(xi.grad, grads[1], rtol=1e-6, atol=1e-8)
