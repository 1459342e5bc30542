"""The window-NMF sub-block as a registered PyTorch operator, ``lesion_factorizer::window_nmf``, so
that ``torch.compile`` and ``torch.export`` keep the compiled kernel (``nn/native.py``) in their
graphs: a ctypes call is invisible to tracers, which would fall back to the plain graph.

The operator is what a Local/Swin :class:`WrappedNMF` computes after its input projection and ReLU:
``F.linear(reconstruct(NMF(matricize(z))), weight, bias)`` for a rank-1 HALS NMF (every preset);
:func:`call` builds its arguments from the layer (the initial spatial factor ``v0`` is passed as a
tensor, a constant of the traced graph, so that :func:`definition` holds no constant of its own).

- **Run** (eager, an exported program, compiled code): the output bias, then
  ``LocalMatricize.add_projected`` — the verified kernel where it is available (same loading and
  manifest check as eager inference), else the PyTorch window path.
- **Traced** (``torch.compile``/``torch.export``): a fake implementation that gives the output's
  shape and dtype, so the operator stays one opaque node.
- **Gradients**: the vector–Jacobian product of :func:`definition`, recomputed (the kernel has no
  backward); ``WrappedNMF`` uses the operator only in eval mode, and under ``torch.compile`` only
  with gradients off, so training and compiled backward passes trace the plain graph.
- **ONNX**: ONNX Runtime cannot run our kernel. Exporting a module to ONNX traces the plain graph
  (``WrappedNMF`` leaves the operator out while ``torch.onnx`` exports); an exported program that
  holds the operator goes through :func:`for_onnx` first, which replaces it by :func:`definition`.
  The definition is deliberately not in torch's global decomposition table: Inductor refuses to
  compile an operator with a registered decomposition as an opaque call (under ``CI=1`` it raises).

The operator exists from torch 2.4 (``torch.library.custom_op``); on older torch :data:`OP` is None
and tracers get the plain graph. Registering it imports nothing heavy; *calling* an operator in
eager mode would import ``torch._dynamo`` (seconds per worker start), so eager inference keeps
calling the kernel directly and only tracers see the operator (``WrappedNMF.forward``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from LesionFactorizerLib.nn.matricize import LocalMatricize, ShiftedWindowMatricize, make_matricize
from LesionFactorizerLib.nn.nmf import NMF, _rank1_hals as rank1_hals, initial_factors, select_components

NAME = "lesion_factorizer::window_nmf"


def call(z: torch.Tensor, mat: LocalMatricize, nmf: NMF, out_proj: torch.nn.Linear) -> torch.Tensor:
    """The operator for a :class:`WrappedNMF`'s matricize, NMF layer and output projection."""
    _, v0 = initial_factors(mat.head_dim, mat.window ** 3, 1, nmf.seed, dtype=z.dtype, device=z.device)
    return OP(z, out_proj.weight, out_proj.bias, v0[:, 0], mat.head_dim, mat.window,
              isinstance(mat, ShiftedWindowMatricize), nmf.iters, nmf.eps, nmf.seed,
              -1 if nmf.drop is None else nmf.drop[1], -1 if nmf.grad_iters is None else nmf.grad_iters)


def _parts(head_dim: int, window: int, shifted: bool, iters: int, eps: float, seed: int, drop: int,
           grad_iters: int, channels: int):
    """The matricize and NMF layer the operator's arguments describe (``drop``/``grad_iters`` < 0:
    none)."""
    mat = make_matricize("swin" if shifted else "local", head_dim, window)
    nmf = NMF(1, iters, "hals", None if grad_iters < 0 else grad_iters, eps, seed)
    nmf.drop = None if drop < 0 else (channels // head_dim, drop)
    return mat, nmf


def definition(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, v0: torch.Tensor, head_dim: int,
               window: int, shifted: bool, iters: int, eps: float, seed: int, drop: int,
               grad_iters: int) -> torch.Tensor:
    """The operator in plain, traceable PyTorch: ``WrappedNMF.forward``'s steps (``NMF.decompose``
    at rank 1 with its initial spatial factor ``v0`` given: ``initial_factors(E, P³, 1, seed)``,
    a constant of the traced graph)."""
    mat, nmf = _parts(head_dim, window, shifted, iters, eps, seed, drop, grad_iters, z.shape[-1])
    mat.functional = True
    mats, lay = mat.matricize(z)
    first_grad_iter = 0 if nmf.grad_iters is None else max(iters - nmf.grad_iters, 0)
    u, v = rank1_hals(mats, v0, iters, first_grad_iter, eps)
    u = select_components(nmf, u.unsqueeze(-1))
    return F.linear(mat.reconstruct(u, v.unsqueeze(-1), lay), weight, bias)


def _run(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, v0: torch.Tensor, head_dim: int,
         window: int, shifted: bool, iters: int, eps: float, seed: int, drop: int,
         grad_iters: int) -> torch.Tensor:
    mat, nmf = _parts(head_dim, window, shifted, iters, eps, seed, drop, grad_iters, z.shape[-1])
    out = z.new_empty(*z.shape[:-1], weight.shape[0])
    out.copy_(bias.detach())
    with torch.no_grad():   # the forward of an autograd node: its backward is _backward
        mat.add_projected(z.detach().contiguous(), nmf, weight.detach().contiguous(), out)
    return out


def _fake(z, weight, bias, v0, head_dim, window, shifted, iters, eps, seed, drop, grad_iters):
    return z.new_empty(*z.shape[:-1], weight.shape[0])


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.settings = inputs[4:]


def _backward(ctx, grad):
    from torch.func import vjp

    z, weight, bias, v0 = ctx.saved_tensors
    _, pullback = vjp(lambda z, w, b: definition(z, w, b, v0, *ctx.settings), z, weight, bias)
    return (*pullback(grad), None, *(None,) * len(ctx.settings))


def _register():
    """The operator's overload packet, or None where this torch cannot register it."""
    if not hasattr(torch.library, "custom_op"):   # torch < 2.4
        return None
    try:   # already registered by another copy of this module in the process (e.g. reloaded)
        return torch.ops.lesion_factorizer.window_nmf
    except AttributeError:
        pass
    op = torch.library.custom_op(NAME, _run, mutates_args=())
    op.register_fake(_fake)
    op.register_autograd(_backward, setup_context=_save)
    return torch.ops.lesion_factorizer.window_nmf


OP = _register()


def for_onnx(program):
    """``program`` (a ``torch.export.ExportedProgram``) with every call of the operator replaced by
    its plain :func:`definition`, for the ONNX exporter (ONNX Runtime cannot run our kernel)."""
    if OP is None or not any(node.target == OP.default for node in program.graph.nodes):
        return program
    return program.run_decompositions({OP.default: definition})
