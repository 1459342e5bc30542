"""The NMF layer: batched non-negative matrix factorisation unrolled as a differentiable layer.

``X (…, M, N) ≥ 0`` is factorised as ``U Vᵀ`` with ``U (…, M, R) ≥ 0`` and ``V (…, N, R) ≥ 0`` by
``T`` outer iterations of HALS (thesis Alg. 5) or Lee–Seung multiplicative updates (Alg. 4). The
layer outputs the reconstruction; :meth:`NMF.decompose` returns the factors (the interpretable
components).

Choices, following the authors' code (github.com/pashtari/factorizer at tag 0.0.1, ``factorization/``):
- each iteration updates U first, then V with the new U;
- ``eps`` (1e-8) sits in numerator *and* denominator of both solvers, e.g. for HALS at R=1
  ``u ← ReLU((Xv + eps) / (vᵀv + eps))``, which keeps factors strictly positive on all-zero inputs
  (the ReLU is a no-op there because X ≥ 0, so the rank-1 closed form leaves it out);
- initial factors are uniform U[0, 1), identical for every matrix in the batch.

Deliberate change: the reference stores the initial factors as state-dict buffers sized for one
matrix shape (for Global matricize: one entry per voxel of the training patch). Here they are
generated from the layer's seed for the actual ``(M, N, R)``, so a trained layer accepts any input
size and model files carry no random buffers. They are *constants* of the computation, never drawn
inside the graph: see :func:`initial_factors`.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from torch import nn

SOLVERS = ("hals", "mu")


def _torch_cpu_uniform(count: int, seed: int) -> np.ndarray:
    """The first ``count`` values of ``torch.rand(..., generator=torch.Generator().manual_seed(seed),
    dtype=torch.float64)``, computed without torch.

    torch's CPU generator is MT19937 seeded like the reference implementation (``init_genrand``);
    a float64 takes two 32-bit draws ``a, b`` and keeps 53 bits: ``((a mod 2²¹)·2³² + b) / 2⁵³``.
    Reproducing it in numpy keeps the factors every model so far was trained with, while making them
    invisible to tracers (a test checks the two agree bit for bit)."""
    bits = np.random.MT19937()
    bits._legacy_seeding(int(seed))
    raw = bits.random_raw(2 * count).astype(np.uint64).reshape(count, 2)
    mantissa = ((raw[:, 0] & np.uint64((1 << 21) - 1)) << np.uint64(32)) | raw[:, 1]
    return mantissa.astype(np.float64) * 2.0**-53


@functools.lru_cache(maxsize=64)
def _initial_factors_f64(m: int, n: int, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.from_numpy(_torch_cpu_uniform((m + n) * rank, seed))
    return values[: m * rank].view(m, rank), values[m * rank:].view(n, rank)


def _initial_factors_constant(m: int, n: int, rank: int, seed: int) -> torch.Tensor:
    """Both factors as one ``((M+N)·R,)`` float64 tensor, which compilers and exporters fold into
    the graph (they are a function of the shape and seed alone) instead of tracing the numpy above."""
    u0, v0 = _initial_factors_f64(m, n, rank, seed)
    return torch.cat([u0.reshape(-1), v0.reshape(-1)])


# Marked a constant of the graph here, so that a freshly built network compiles and exports as it
# is. ``torch.compiler.assume_constant_result`` sets exactly this attribute, but imports
# torch._dynamo to do it: seconds of CPU at every worker start, which eager inference never needs.
# (test_nn_export compiles and exports fresh networks: a torch that renamed it fails there.)
_initial_factors_constant._dynamo_marked_constant = True


def initial_factors(m: int, n: int, rank: int, seed: int, dtype=torch.float32, device=None):
    """Reproducible U[0,1) initial factors ``(M, R)`` and ``(N, R)`` for one matrix shape.

    They depend on ``(M, N, R, seed)`` only, so they are computed in plain Python (numpy) and cached:
    ``torch.compile`` sees one constant and no graph break, ``torch.export`` and ONNX store the
    values for the traced shape, and no random generator runs inside ``forward``."""
    if torch.compiler.is_compiling():
        values = _initial_factors_constant(m, n, rank, int(seed))
        u0, v0 = values[: m * rank].view(m, rank), values[m * rank:].view(n, rank)
    else:
        u0, v0 = _initial_factors_f64(m, n, rank, int(seed))
    # copies: the cached values must never be written through a caller's tensor
    return u0.to(device=device, dtype=dtype, copy=True), v0.to(device=device, dtype=dtype, copy=True)


def objective(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius error ``‖X − U Vᵀ‖²`` per matrix."""
    return (x - u @ v.transpose(-1, -2)).pow(2).sum(dim=(-2, -1))


def _hals_half_step(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """New U for fixed V: one Gauss–Seidel sweep over the columns of U."""
    a = x @ v  # (…, M, R)
    b = v.transpose(-1, -2) @ v  # (…, R, R)
    rank = u.shape[-1]
    if rank == 1:
        return torch.relu((a + eps) / (b + eps))
    cols = list(u.unbind(-1))
    for r in range(rank):
        # a_r − Σ_{s≠r} b_sr u_s, using the columns already updated in this sweep.
        others = sum(cols[s] * b[..., s, r, None] for s in range(rank) if s != r)
        cols[r] = torch.relu((a[..., r] - others + eps) / (b[..., r, r, None] + eps))
    return torch.stack(cols, dim=-1)


def _mu_half_step(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """New U for fixed V by Lee–Seung's multiplicative rule."""
    return u * (x @ v + eps) / (u @ (v.transpose(-1, -2) @ v) + eps)


_HALF_STEPS = {"hals": _hals_half_step, "mu": _mu_half_step}


def _rank1_hals(x: torch.Tensor, v0: torch.Tensor, iters: int, first_grad_iter: int, eps: float):
    """HALS at R=1 without iterating over X: the same updates, in closed form, from its Gram matrix.

    The alternating updates ``u ← (Xv + eps)/(vᵀv + eps)``, ``v ← (Xᵀu + eps)/(uᵀu + eps)`` only
    touch X through ``Xv`` and ``vᵀv``. Writing the current v as ``(Xᵀa + eps·1)/c`` gives
    ``Xv = (G a + eps·s)/c`` and ``vᵀv = (aᵀG a + 2·eps·aᵀs + eps²·N)/c²`` with the M×M Gram matrix
    ``G = X Xᵀ`` and row sums ``s = X 1``. So one pass over X computes G, s and X v0; the T
    iterations then run on M-vectors; one more pass forms the final V. Memory traffic, not FLOPs,
    bounds this layer on CPUs: 2 passes over X instead of 2T. Same arithmetic, so same result and
    gradients as the column-wise solver (up to rounding).

    Truncated gradients (``first_grad_iter > 0``, the reference's ``num_grad_steps``): the factor V
    entering the first differentiated iteration must be a constant. Kept implicit, it would carry
    X's gradient through ``G``, so it is formed explicitly there (one more pass over X).
    """
    gram, rowsum, n = x @ x.transpose(-1, -2), x.sum(-1), x.shape[-1]
    xv, vv = x @ v0, v0.dot(v0)
    if first_grad_iter > 0:
        with torch.no_grad():
            u, c = rank1_hals_from_moments(gram, rowsum, xv, vv, n, first_grad_iter, eps)
            v = ((u.unsqueeze(-2) @ x).squeeze(-2) + eps) / c
        if first_grad_iter >= iters:
            return u, v
        xv, vv = (x @ v.unsqueeze(-1)).squeeze(-1), v.pow(2).sum(-1, keepdim=True)
    u, c = rank1_hals_from_moments(gram, rowsum, xv, vv, n, iters - first_grad_iter, eps)
    v = ((u.unsqueeze(-2) @ x).squeeze(-2) + eps) / c
    return u, v


def rank1_hals_from_moments(gram: torch.Tensor, rowsum: torch.Tensor, xv0: torch.Tensor,
                            vv0: torch.Tensor | float, n: int, iters: int,
                            eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``iters`` rank-1 HALS iterations of :func:`_rank1_hals` from X's moments alone:
    ``gram = X Xᵀ (…, M, M)``, ``rowsum = X 1``, ``xv0 = X v0`` (both ``(…, M)``), ``vv0 = v0ᵀv0``
    and ``n`` columns. Returns ``u (…, M)`` and ``c (…, 1)``; the final factor is
    ``v = (Xᵀu + eps) / c``, left to the caller, which may fold it into what it computes next."""
    u = c = None
    xv, vv = xv0, vv0
    for _ in range(iters):
        if u is not None:  # v is implicit: (Xᵀu + eps)/c
            gu = (gram @ u.unsqueeze(-1)).squeeze(-1)
            xv = (gu + eps * rowsum) / c
            vv = ((u * gu).sum(-1, keepdim=True) + 2 * eps * (u * rowsum).sum(-1, keepdim=True)
                  + eps * eps * n) / (c * c)
        u = (xv + eps) / (vv + eps)
        c = u.pow(2).sum(-1, keepdim=True) + eps
    return u, c


def factorize(
    x: torch.Tensor,
    rank: int = 1,
    iters: int = 5,
    solver: str = "hals",
    grad_iters: int | None = None,
    eps: float = 1e-8,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factorise ``x (…, M, N) ≥ 0`` into ``U (…, M, R)``, ``V (…, N, R)``.

    ``grad_iters=k`` keeps autograd only through the last ``k`` iterations (``None``: all, as in
    the thesis), as the reference's ``num_grad_steps``: earlier iterations run under ``no_grad``
    and the factors entering iteration T−k+1 are constants, which saves memory when training
    with many iterations.
    """
    if solver not in _HALF_STEPS:
        raise ValueError(f"unknown NMF solver {solver!r}; choose one of {SOLVERS}")
    if rank < 1 or iters < 0:
        raise ValueError(f"NMF needs rank >= 1 and iters >= 0, got rank={rank}, iters={iters}")
    m, n = x.shape[-2:]
    # 1. initial factors: constants of (M, N, R, seed), the same for every matrix of the batch
    u0, v0 = initial_factors(m, n, rank, seed, dtype=x.dtype, device=x.device)
    first_grad_iter = 0 if grad_iters is None else max(iters - grad_iters, 0)
    # 2a. rank-1 HALS: the same iterations in closed form over X's Gram matrix
    if rank == 1 and solver == "hals" and iters > 0:   # NMF.uses_moments
        u, v = _rank1_hals(x, v0[:, 0], iters, first_grad_iter, eps)
        return u.unsqueeze(-1), v.unsqueeze(-1)
    # 2b. otherwise T alternating half-steps, U for fixed V then V for the new U
    u = u0.expand(*x.shape[:-2], m, rank)
    v = v0.expand(*x.shape[:-2], n, rank)
    xt = x.transpose(-1, -2)
    step = _HALF_STEPS[solver]
    for it in range(iters):
        with torch.no_grad() if it < first_grad_iter else contextlib.nullcontext():
            u = step(x, u, v, eps)
            v = step(xt, v, u, eps)
    return u, v


def drop_component(u: torch.Tensor, heads: int, component: int) -> torch.Tensor:
    """``U`` with the column of one component zeroed, so that ``U Vᵀ`` is the reconstruction
    without it (the sum over the other components).

    Components are numbered like the factor maps, ``head · R + rank``; in every matricize the
    matrices of a batch list the heads innermost, so matrix ``m`` belongs to head ``m mod heads``."""
    rank = u.shape[-1]
    head, col = divmod(int(component), rank)
    keep = torch.ones(heads, 1, rank, dtype=u.dtype, device=u.device)
    keep[head, 0, col] = 0
    return (u.reshape(-1, heads, *u.shape[-2:]) * keep).reshape(u.shape)


def keep_component(u: torch.Tensor, heads: int, component: int) -> torch.Tensor:
    """``U`` with every column but one component's zeroed: ``U Vᵀ`` is then that component's term
    alone (numbered as in :func:`drop_component`)."""
    return u - drop_component(u, heads, component)


def select_components(nmf: "NMF", u: torch.Tensor) -> torch.Tensor:
    """``U`` as the layer's reconstruction uses it: without ``nmf.drop``, or only ``nmf.keep``."""
    if nmf.drop is not None:
        u = drop_component(u, *nmf.drop)
    if nmf.keep is not None:
        u = keep_component(u, *nmf.keep)
    return u


class NMF(nn.Module):
    """NMF layer: forward returns the low-rank reconstruction ``U Vᵀ`` of a non-negative input.

    ``rank``, ``iters`` and ``solver`` are plain attributes: they may be changed on a trained model
    (inference-time ablations, thesis 7.4.5) without touching any weight — the layer has none.
    """

    def __init__(
        self,
        rank: int = 1,
        iters: int = 5,
        solver: str = "hals",
        grad_iters: int | None = None,
        eps: float = 1e-8,
        seed: int = 0,
    ):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"unknown NMF solver {solver!r}; choose one of {SOLVERS}")
        self.rank, self.iters, self.solver = rank, iters, solver
        self.grad_iters, self.eps, self.seed = grad_iters, eps, seed
        # (heads, component) left out of the reconstruction: the "drop this component"
        # counterfactual (pipeline/counterfactual.py). Set here so that every forward path, plain
        # or memory-saving, leaves it out; the factors themselves (and the maps) are unchanged.
        self.drop: tuple[int, int] | None = None
        # (heads, component) kept alone: the "keep only this component" group counterfactual
        self.keep: tuple[int, int] | None = None

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, v = factorize(x, self.rank, self.iters, self.solver, self.grad_iters, self.eps, self.seed)
        return select_components(self, u), v

    def uses_moments(self) -> bool:
        """Whether :func:`factorize` takes the rank-1 HALS closed form, which needs only X's
        moments (:func:`rank1_hals_from_moments`) — callers may compute those their own way."""
        return self.rank == 1 and self.solver == "hals" and self.iters > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.decompose(x)
        return u @ v.transpose(-1, -2)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, iters={self.iters}, solver={self.solver!r}, grad_iters={self.grad_iters}"
