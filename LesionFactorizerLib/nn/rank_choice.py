"""Choosing the NMF rank (thesis 5.4): the relative-error-vs-rank curve and its Kneedle elbow.

For the matrices one NMF layer factorises (every head and window of one input), the curve is
``e(R) = ‖X − U_R V_Rᵀ‖_F / ‖X‖_F`` over all of them together, with ``U_R V_Rᵀ`` from HALS run to
(near) convergence at rank R — not the few unrolled iterations of the layer, which approximate
the same problem. The elbow is where the curve stops falling steeply: Kneedle (Satopää et al.
2011, the ``kneed`` package) on the convex, decreasing curve. A layer whose elbow is at R = 1
loses little by its rank-1 NMF; a later elbow says that more components carry structure.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.nn.nmf import factorize


def error_curve(x: torch.Tensor, ranks: Sequence[int], iters: int = 200, seed: int = 0) -> list[float]:
    """Relative Frobenius error of the rank-R HALS NMF of ``x (…, M, N) ≥ 0`` for each R in
    ``ranks``, over all matrices of the batch together (float64)."""
    x = x.detach().to(torch.float64)
    total = x.pow(2).sum()
    if total == 0:
        raise UserError("the matrices are all zero: no error curve to draw")
    errors: list[float] = []
    for rank in ranks:
        u, v = factorize(x, int(rank), iters, "hals", seed=seed)
        error = float(((x - u @ v.transpose(-1, -2)).pow(2).sum() / total).sqrt())
        # a rank-R factorisation can always do what a smaller one did (a zero column), so the best
        # error never rises with R; a finite HALS run from a random start sometimes ends higher
        errors.append(min([error] + [e for r, e in zip(ranks, errors) if r < rank]))
    return errors


def kneedle_elbow(ranks: Sequence[int], errors: Sequence[float]) -> int | None:
    """The Kneedle elbow of a decreasing convex error curve (``None`` if it has none)."""
    try:
        from kneed import KneeLocator
    except ImportError:
        raise UserError("the Kneedle elbow needs the kneed package: pip install \"lesion-factorizer[analysis]\"") from None
    if len(ranks) < 3:
        return None
    knee = KneeLocator(list(ranks), list(errors), curve="convex", direction="decreasing").knee
    return None if knee is None else int(knee)


def default_ranks(m: int, n: int, max_rank: int | None = None) -> list[int]:
    """1 … min(M, N, max_rank): beyond min(M, N) the factorisation is exact."""
    top = min(m, n) if max_rank is None else min(m, n, max_rank)
    return list(range(1, top + 1))


def layer_matrices(model: torch.nn.Module, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
    """The non-negative matrices each named NMF layer of a Factorizer factorises for input ``x``
    (``(B·heads·windows, M, N)``; for Swin the regular and the shifted partition, stacked).

    Read from the plain forward: a hook on each Wrapped-NMF takes its (normed) input and forms
    ``matricize(ReLU(W_in ·))`` as the layer does."""
    from LesionFactorizerLib.nn.factorizer import plain_forward

    wrapped = model.nmf_layers()
    unknown = [n for n in layers if n not in wrapped]
    if unknown:
        raise UserError(f"unknown NMF layer(s) {', '.join(unknown)}; layers are: {', '.join(wrapped)}")
    found: dict[str, torch.Tensor] = {}
    hooks = []
    for name in layers:
        def hook(module, args, name=name):
            mats, _ = module.matricize.matricize(torch.relu(module.in_proj(args[0])))
            found[name] = mats.reshape(-1, *mats.shape[-2:]).detach()
        hooks.append(wrapped[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad(), plain_forward(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {name: found[name] for name in layers}


def plot_curves(curves: dict[str, dict], path: str) -> None:
    """One panel per curve: relative error vs rank, the elbow marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, (name, c) in zip(axes.flat, curves.items()):
        ax.plot(c["ranks"], c["errors"], "o-", color="tab:blue", ms=4)
        if c["elbow"] is not None:
            e = c["errors"][c["ranks"].index(c["elbow"])]
            ax.axvline(c["elbow"], color="tab:red", ls="--", lw=1)
            ax.plot([c["elbow"]], [e], "o", color="tab:red", ms=8, label=f"Kneedle elbow R = {c['elbow']}")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{name}  ({c['shape']})", fontsize=9)
        ax.set_xlabel("rank R")
        ax.set_ylabel("relative error")
        ax.set_xticks(c["ranks"] if len(c["ranks"]) <= 20 else c["ranks"][::max(1, len(c["ranks"]) // 10)])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_matrix_file(path: str) -> np.ndarray:
    """A ``.npy`` file holding one non-negative matrix ``(M, N)`` or a stack ``(B, M, N)``; never
    unpickled."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{path}: not a plain numeric .npy array ({exc}); object arrays are not read") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3) or array.dtype.kind not in "iuf":
        raise UserError(f"{path}: expected a numeric (M, N) or (B, M, N) array, got "
                        f"{getattr(array, 'dtype', '?')} of shape {getattr(array, 'shape', '?')}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise UserError(f"{path}: NMF needs a finite, non-negative matrix")
    return array
