"""Factorizer networks (thesis chapter 7): Global, Local and Swin Factorizer.

A Factorizer block is two pre-norm residual sub-blocks, ``x + WrappedNMF(LN(x))`` then
``x + MLP(LN(x))``, preceded by a bias-free 1×1 adapter (+dropout) when the channel count changes
(decoder 2C→C) and, at the bridge only, a learnable position embedding (+dropout). Layer order,
biases, dropout and initialisation follow the authors' code (reference note §2.1).

Inside blocks features are channels-last ``(B, D, H, W, C)``: layer norm and the 1×1 projections
then work on contiguous rows, and the skeleton keeps tensors in ``channels_last_3d`` memory so
switching views is free.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from LesionFactorizerLib.nn import cputhreads, native, window_op
from LesionFactorizerLib.nn.matricize import LocalMatricize, make_matricize
from LesionFactorizerLib.nn.nmf import NMF
from LesionFactorizerLib.nn.unet import UShapedNet, layer_names


def memory_saving_path(block: "FactorizerBlock") -> bool:
    """Whether ``block`` runs its memory-saving inference path — the one switch between the two.

    That path computes exactly what the plain forward computes (tested equal), but slab-wise and
    in place, so a full-resolution map crosses main memory a few times instead of ~20 (CPUs are
    bound by memory traffic here, not FLOPs). It runs only in eager inference: under autograd its
    in-place writes would break gradients (and it has no dropout); compilers and exporters
    (``torch.compile``, ``torch.export``, ONNX) get the plain graph, which they fuse themselves and
    which ONNX Runtime reproduces, with the window NMF as one operator that runs the kernel
    (``nn/window_op.py``; ONNX decomposes it). ``block.memory_saving = False`` turns it off
    (tests, profiling; :func:`plain_forward` for a whole network)."""
    return (block.memory_saving and not block.training and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and not torch.compiler.is_exporting())


@contextlib.contextmanager
def plain_forward(model: nn.Module):
    """Inside, every Factorizer block of ``model`` runs its plain forward: the reference the
    memory-saving path is checked against, and the graph whose FLOPs are the network's own."""
    blocks = [m for m in model.modules() if isinstance(m, FactorizerBlock)]
    saved = [block.memory_saving for block in blocks]
    for block in blocks:
        block.memory_saving = False
    try:
        yield model
    finally:
        for block, flag in zip(blocks, saved):
            block.memory_saving = flag


def position_embedding(channels: int, size: int) -> nn.Parameter:
    """The bridge's learnable position embedding ``(1, C, size, size, size)``: std-1 normal init as
    in the authors' code (the same values as torch.randn). Not drawn on the meta device, where
    model files' shapes are checked: a meta normal_ loads torch's symbolic-shape machinery, which
    every worker start would pay for."""
    pos = torch.empty(1, channels, *(size,) * 3)
    return nn.Parameter(pos if pos.is_meta else pos.normal_())


def position_at(pos: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``pos`` on ``grid`` (trilinear when the grid differs from the trained one), channels-last."""
    if tuple(pos.shape[2:]) != grid:
        pos = F.interpolate(pos, size=grid, mode="trilinear", align_corners=False)
    return pos.permute(0, 2, 3, 4, 1)


class WrappedNMF(nn.Module):
    """1×1 projection → matricize → ReLU → NMF (reconstruction) → dematricize → 1×1 projection.

    Two inference-time ablations that need no weight change:

    - ``skip = True`` short-circuits the NMF layer itself, NMF(X) := X (thesis 7.4.5, and the
      reference's ablation, which swaps the factorisation for an identity): the projections, the
      ReLU and the residual stay, so the sub-block is ``W_out ReLU(W_in x) + b``;
    - ``drop_branch = True`` removes the whole residual branch (it contributes zero), which is not
      the thesis's ablation but skips the projections too.

    ``capture = True`` keeps the spatial factors of the last forward pass as images in
    ``self.components`` (B, heads·R, D, H, W); a skipped or dropped layer has none.
    """

    def __init__(self, channels: int, matricize: str, head_dim: int, window: int | None,
                 nmf: NMF, dropout: float):
        super().__init__()
        self.in_proj = nn.Linear(channels, channels, bias=False)
        self.out_proj = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(dropout)
        self.matricize = make_matricize(matricize, head_dim, window)
        self.nmf = nmf
        self.skip = False
        self.drop_branch = False
        self.capture = False
        self.components: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU commutes with the (pure re-indexing) matricize; in place on the fresh projection.
        z = torch.relu_(self.in_proj(x))
        if self.skip:   # NMF(X) := X; matricize is pure re-indexing, so it cancels with its inverse
            return self.dropout(self.out_proj(z))
        if self._traced_kernel(z):   # the steps below as one operator that runs the compiled kernel
            return self.dropout(window_op.call(z, self.matricize, self.nmf, self.out_proj))
        mats, layout = self.matricize.matricize(z)        # heads × windows → batch of E×N matrices
        u, v = self.nmf.decompose(mats)                   # X ≈ U Vᵀ, V holds the spatial factors
        if self.capture:
            self.components = self.matricize.factor_maps(v.detach(), layout)
        y = self.matricize.reconstruct(u, v, layout)      # U Vᵀ, back on the channels-last grid
        return self.dropout(self.out_proj(y))

    def _traced_kernel(self, z: torch.Tensor) -> bool:
        """Whether a tracer (torch.compile, torch.export) is given ``nn/window_op.py``'s operator for
        this layer instead of the plain steps: inference (eval mode; under torch.compile also no
        gradients, so compiled backward passes differentiate the plain graph) of a rank-1 HALS
        window NMF on float32 CPU tensors, the kernel's case; never while exporting to ONNX (whose
        runtime cannot run the kernel). Eager calls never take it: they call the kernel directly
        (``add_low_memory``) and need not import torch._dynamo."""
        nmf = self.nmf
        return (window_op.OP is not None and isinstance(self.matricize, LocalMatricize) and not self.capture
                and nmf.uses_moments() and nmf.keep is None and not self.training
                and z.device.type == "cpu" and z.dtype == torch.float32
                and ((torch.compiler.is_exporting() and not torch.onnx.is_in_onnx_export())
                     or (torch.compiler.is_compiling() and not torch.is_grad_enabled())))

    def add_low_memory(self, z: torch.Tensor, out: torch.Tensor) -> None:
        """Memory-saving path only: ``out += W_out · NMF-approximation(z)`` (no bias) in place, for
        the projected, rectified map ``z`` (see ``LocalMatricize.add_projected``)."""
        maps = self.matricize.add_projected(z, self.nmf, self.out_proj.weight, out, self.capture)
        if self.capture:
            self.components = maps


class MLP(nn.Module):
    def __init__(self, channels: int, ratio: float, dropout: float):
        super().__init__()
        hidden = int(channels * ratio)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class FactorizerBlock(nn.Module):
    """One Factorizer block on a channels-first tensor stored channels-last (see module doc)."""

    def __init__(self, cin: int, cout: int, *, matricize: str, head_dim: int, window: int | None,
                 mlp_ratio: float, dropout: float, nmf: NMF, pos_embed_size: int | None = None):
        super().__init__()
        self.adapter = nn.Linear(cin, cout, bias=False) if cin != cout else None
        self.pos_embed = None
        if pos_embed_size:
            self.pos_embed = position_embedding(cout, pos_embed_size)
        self.dropout = nn.Dropout(dropout)
        self.nmf_norm = nn.LayerNorm(cout)
        self.nmf = WrappedNMF(cout, matricize, head_dim, window, nmf, dropout)
        self.mlp_norm = nn.LayerNorm(cout)
        self.mlp = MLP(cout, mlp_ratio, dropout)
        self.memory_saving = True  # see memory_saving_path
        self.workspace = Workspace()  # the Factorizer gives all its blocks one

    def _position(self, grid: tuple[int, ...]) -> torch.Tensor:
        return position_at(self.pos_embed, grid)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` alone, or (decoder) the upsampled ``x`` with its ``skip`` connection: the block then
        reads ``cat([skip, x])`` through the adapter without the concatenation being built."""
        x = x.permute(0, 2, 3, 4, 1)  # free view for channels_last_3d memory
        parts = [x] if skip is None else [skip.permute(0, 2, 3, 4, 1), x]
        if memory_saving_path(self):
            return self._forward_memory_saving(parts).permute(0, 4, 1, 2, 3)
        x = self._adapt(parts)                                   # 1×1 adapter (2C→C in decoders)
        if self.adapter is not None:
            x = self.dropout(x)
        if self.pos_embed is not None:                           # bridge: learnt position
            x = self.dropout(x + self._position(tuple(x.shape[1:4])))
        if not self.nmf.drop_branch:
            x = x + self.nmf(self.nmf_norm(x))                   # x + WrappedNMF(LN(x))
        x = x + self.mlp(self.mlp_norm(x))                       # x + MLP(LN(x))
        return x.permute(0, 4, 1, 2, 3)

    def _adapt(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The 1×1 adapter on the channel concatenation of ``parts``, as a sum of products."""
        if self.adapter is None:
            return parts[0]
        weights = self.adapter.weight.split([p.shape[-1] for p in parts], dim=1)
        out = F.linear(parts[0], weights[0])
        for part, weight in zip(parts[1:], weights[1:]):
            out = out + F.linear(part, weight)
        return out

    def _forward_memory_saving(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The forward above, for eager inference (see :func:`memory_saving_path`): the same steps,
        over cache-sized runs of voxels, with every per-voxel pass that can be folded away folded:

        - the NMF sub-block's output bias is added while ``out`` is first written (``x + b``), and
          its projection is added into ``out`` window by window, folded with the reconstruction
          (``add_low_memory``): no reconstructed map, no bias broadcast, no separate residual add;
        - the NMF input ``z = ReLU(W_in LN(x))`` is written by the product straight into its buffer;
        - GELU runs in place on the MLP's hidden rows.
        Layer norm runs the compiled kernel into scratch rows where it can (:func:`_layer_norm`);
        PyTorch's returns a fresh chunk-sized tensor, which the allocator hands back chunk after chunk
        (its out= form would compute into one anyway and then copy it over).
        Each removed pass is one full-resolution read+write; on CPUs this block is bound by memory
        traffic, not FLOPs (profiled: copies and bias broadcasts were a large share of its time). Every
        per-chunk temporary is written into its thread's :class:`_Scratch`, reused by all its chunks: a fresh
        tensor per chunk is a fresh page-faulted, zeroed allocation each time (the decoder's adapter
        alone ran several times slower that way; ``benchmarks/bench_model.py`` times the block)."""
        b, d, h, w, _ = parts[0].shape
        c = self.nmf_norm.normalized_shape[0]
        rows = [p.reshape(-1, p.shape[-1]) for p in parts]
        out = self.workspace.get(("out", id(self)), b * d * h * w * c, parts[0]).view(-1, c)
        pos = self._position((d, h, w)).reshape(-1, c) if self.pos_embed is not None else None
        nmf, mlp = self.nmf, self.mlp
        full_nmf = not (nmf.skip or nmf.drop_branch)   # only the NMF itself needs the whole map z
        z = self.workspace.get("z", out.numel(), out).view(out.shape) if full_nmf else None
        # each thread's share of the rows runs end to end (``nn/cputhreads.py``); not on a GPU
        parts_of = None if out.device.type == "cpu" else 1

        def nmf_rows(start: int, stop: int) -> None:
            scratch = _Scratch(out)
            for sl in _chunks(start, stop, c):
                xi = self._adapt_into([r[sl] for r in rows], scratch)
                if pos is not None:  # rows of a chunk may span batch items: index modulo the grid
                    xi = xi + pos[torch.arange(sl.start, sl.stop, device=out.device) % pos.shape[0]]
                if nmf.drop_branch:
                    out[sl] = xi
                    continue
                zi = z[sl] if full_nmf else scratch.rows("z", xi.shape[0], c)
                torch.mm(_layer_norm(self.nmf_norm, xi, scratch), nmf.in_proj.weight.t(), out=zi).relu_()
                torch.add(xi, nmf.out_proj.bias, out=out[sl])
                if nmf.skip:   # NMF(X) := X: the output projection of z itself, row by row
                    out[sl].addmm_(zi, nmf.out_proj.weight.t())

        def mlp_rows(start: int, stop: int) -> None:
            scratch = _Scratch(out)
            for sl in _chunks(start, stop, mlp.fc1.out_features):
                dst = out[sl]
                hidden = scratch.rows("hidden", dst.shape[0], mlp.fc1.out_features)
                normed = _layer_norm(self.mlp_norm, dst, scratch)
                torch.addmm(mlp.fc1.bias, normed, mlp.fc1.weight.t(), out=hidden)
                torch._C._nn.gelu_(hidden)
                torch.addmm(dst, hidden, mlp.fc2.weight.t(), out=dst)  # one view in and out: accumulates
                dst += mlp.fc2.bias

        cputhreads.map_ranges(out.shape[0], nmf_rows, parts_of)
        if full_nmf:
            nmf.add_low_memory(z.view(b, d, h, w, c), out.view(b, d, h, w, c))
        cputhreads.map_ranges(out.shape[0], mlp_rows, parts_of)
        return out.view(b, d, h, w, c)

    def _adapt_into(self, parts: list[torch.Tensor], scratch: "_Scratch") -> torch.Tensor:
        """:meth:`_adapt` for one chunk of rows, written into ``scratch`` (no adapter: the rows)."""
        if self.adapter is None:
            return parts[0]
        weights = self.adapter.weight.split([p.shape[-1] for p in parts], dim=1)
        out = torch.mm(parts[0], weights[0].t(), out=scratch.rows("adapt", parts[0].shape[0], weights[0].shape[0]))
        for part, weight in zip(parts[1:], weights[1:]):
            out.addmm_(part, weight.t())
        return out


class Workspace:
    """Full-size maps of the memory-saving path, kept and reused across a network's forward passes:
    the NMF input ``z`` (one buffer for all blocks, which run one after another) and each block's
    output. A fresh full-resolution buffer is paid for in page faults at first touch, every time
    (at 128³ more than the NMF kernel itself costs), and sliding windows run the same
    shape again and again.

    Only inside the network's own forward (:meth:`session`), where every block output is consumed
    before the forward returns (the heads write fresh logits); a block called on its own, another
    thread meanwhile, or a GPU (whose allocator caches freed blocks itself) gets fresh tensors.
    Memory: what the forward needed at its peak, plus the decoder outputs, held while the network
    lives."""

    def __init__(self):
        self.buffers: dict = {}
        self.lock = threading.Lock()
        self.owner: int | None = None

    def __deepcopy__(self, memo):   # a copied network gets its own (empty) workspace
        return Workspace()

    def __reduce__(self):
        return Workspace, ()

    @contextlib.contextmanager
    def session(self):
        """Buffers are kept and reused for this thread inside the ``with`` (unless another thread
        holds the session: then everything is freshly allocated)."""
        if not self.lock.acquire(blocking=False):
            yield
            return
        self.owner = threading.get_ident()
        try:
            yield
        finally:
            self.owner = None
            self.lock.release()

    def get(self, key, numel: int, like: torch.Tensor) -> torch.Tensor:
        """A flat tensor of ``numel`` elements like ``like``: the kept one for ``key`` in a session."""
        if self.owner != threading.get_ident() or like.device.type != "cpu":
            return like.new_empty(numel)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype:
            self.buffers[key] = buf = None  # the old one is freed before a larger one is allocated
            self.buffers[key] = buf = like.new_empty(numel)
        return buf[:numel]


class _Scratch:
    """Named row buffers for one block's chunk loops, allocated once at the largest chunk."""

    def __init__(self, like: torch.Tensor):
        self.like, self.buffers = like, {}

    def rows(self, name: str, rows: int, width: int) -> torch.Tensor:
        buf = self.buffers.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != width:
            buf = self.buffers[name] = self.like.new_empty(rows, width)
        return buf[:rows]


def _layer_norm(norm: nn.LayerNorm, rows: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """``norm(rows)`` into ``scratch``, by the compiled kernel where it runs (``nn/native.py``):
    PyTorch's layer norm spends most of its time per row on rows of 32 or 64 channels."""
    out = scratch.rows("norm", *rows.shape)
    return out if native.layer_norm_rows(rows, norm.weight, norm.bias, norm.eps, out) else norm(rows)


def _chunks(start: int, stop: int, width: int, floats: int = 1 << 19) -> list[slice]:
    """Row ranges of ``[start, stop)`` whose ``width``-wide temporaries (~2 MB) stay in cache."""
    step = max(256, floats // width)
    return [slice(i, min(i + step, stop)) for i in range(start, stop, step)]


class Factorizer(UShapedNet):
    """Global / Local / Swin Factorizer by ``matricize`` = "global" / "local" / "swin".

    Each NMF layer gets its own seed for its initial factors (``seed`` + layer index), mirroring
    the reference where every layer drew its own buffer.
    """

    has_components = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        matricize: str = "swin",
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        head_dim: int = 8,
        window: int | None = 8,
        mlp_ratio: float = 2.0,
        pos_embed_size: int | None = 8,
        rank: int = 1,
        nmf_iters: int = 5,
        solver: str = "hals",
        grad_iters: int | None = None,
        dropout: float = 0.1,
        deep_supervision: int = 3,
        seed: int = 0,
    ):
        names = {name: i for i, (name, _, _) in enumerate(layer_names(len(widths)))}

        def make_block(cin, cout, level, role):
            name = next(n for n, lv, r in layer_names(len(widths)) if lv == level and r == role)
            return FactorizerBlock(
                cin, cout, matricize=matricize, head_dim=head_dim, window=window,
                mlp_ratio=mlp_ratio, dropout=dropout,
                nmf=NMF(rank, nmf_iters, solver, grad_iters, seed=seed + names[name]),
                pos_embed_size=pos_embed_size if role == "bridge" else None,
            )

        super().__init__(in_channels, out_channels, widths, make_block, deep_supervision, channels_last=True)
        workspace = Workspace()
        for block in self.blocks.values():
            block.workspace = workspace
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor, all_heads: bool = False, call=None):
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():   # graphs own their memory
            return super().forward(x, all_heads, call)
        with self.blocks["encoder1"].workspace.session():
            return super().forward(x, all_heads, call)

    def _decode(self, block: FactorizerBlock, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return block(up, skip=skip)  # no concatenated copy: the adapter reads both parts

    # -- interpretability and inference-time knobs -------------------------------------------
    @property
    def component_layers(self) -> list[tuple[str, int]]:
        """(layer name, stride relative to the input grid) in execution order."""
        return [(name, 2**level) for name, level, _ in layer_names(self.levels)]

    def nmf_layers(self) -> dict[str, WrappedNMF]:
        return {name: block.nmf for name, block in self.blocks.items()}

    def set_nmf(self, iters: int | None = None, rank: int | None = None, solver: str | None = None,
                skip: Iterable[str] | None = None, drop_branch: Iterable[str] | None = None) -> None:
        """Change NMF iterations / rank / solver without touching weights (thesis 7.4.5 ablations,
        the fast/balanced/best presets). ``skip``: the named layers compute NMF(X) := X (the
        thesis's short-circuit); ``drop_branch``: the named layers' whole Wrapped-NMF residual
        branch is left out. Each, when given, replaces the previous selection."""
        layers = self.nmf_layers()
        selections = {"skip": skip, "drop_branch": drop_branch}
        for attr, names in selections.items():
            if names is not None:
                selections[attr] = names = set(names)
                unknown = names - set(layers)
                if unknown:
                    raise ValueError(f"unknown NMF layer(s) {sorted(unknown)}; layers are {list(layers)}")
        for name, layer in layers.items():
            if iters is not None:
                layer.nmf.iters = int(iters)
            if rank is not None:
                layer.nmf.rank = int(rank)
            if solver is not None:
                layer.nmf.solver = solver
            for attr, names in selections.items():
                if names is not None:
                    setattr(layer, attr, name in names)

    def forward_with_components(self, x: torch.Tensor, layers: Iterable[str] | None = None):
        """Logits plus, per NMF layer, its spatial factors ``(B, heads·R, ⌈D/s⌉, ⌈H/s⌉, ⌈W/s⌉)``.

        For Swin both partitions are re-assembled and averaged; maps are cropped to the part of
        the layer grid that covers the (unpadded) input. Skipped layers yield no maps.
        """
        size = tuple(x.shape[2:])
        wanted = set(self.nmf_layers()) if layers is None else set(layers)
        nmf_layers = self.nmf_layers()
        for name in wanted:
            nmf_layers[name].capture = True
        try:
            logits = self.forward(x)
            strides = dict(self.component_layers)
            comps = {}
            for name, _ in self.component_layers:
                layer = nmf_layers[name]
                if name in wanted and layer.components is not None:
                    s = strides[name]
                    crop = tuple(slice(0, -(-n // s)) for n in size)
                    comps[name] = layer.components[(..., *crop)].contiguous()
        finally:
            for layer in nmf_layers.values():
                layer.capture, layer.components = False, None
        return logits, comps
