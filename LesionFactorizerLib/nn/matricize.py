"""Matricize: turn a channels-last feature map into a batch of matrices for the NMF layer, and back.

Thesis 7.3.4 / Alg. 6. Channels are split into heads of ``head_dim`` rows; space is split into
windows whose voxels are the columns. Every operation has an exact inverse.

- :class:`GlobalMatricize` — one window = the whole map: ``(B·heads, E, D·H·W)``.
- :class:`LocalMatricize` — non-overlapping ``P³`` windows: ``(B·windows·heads, E, P³)``.
- :class:`ShiftedWindowMatricize` — the Local partition of the map and of the map circularly
  rolled by ``P/2`` on every spatial axis, concatenated along the batch axis (one NMF serves
  both); the inverse un-rolls the second half and averages the two (no border masking, as in
  the authors' code).

Inputs are channels-last ``(B, D, H, W, C)``. Sizes that are not a multiple of the window are
zero-padded at the far end and cropped back by the inverse (the reference code fails there).

The ``Layout`` returned with the matrices carries what the inverse needs; ``factor_maps`` turns
the spatial NMF factor ``V (…, N, R)`` into images ``(B, heads·R, D, H, W)`` on the input grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from LesionFactorizerLib.nn import native
from LesionFactorizerLib.nn.nmf import initial_factors, rank1_hals_from_moments, select_components


@dataclass(frozen=True)
class Layout:
    batch: int
    spatial: tuple[int, int, int]  # unpadded (D, H, W)
    padded: tuple[int, int, int]
    heads: int
    head_dim: int
    window: tuple[int, int, int]


class GlobalMatricize:
    """Whole-volume matrices: global context, no locality bias."""

    name = "global"

    def __init__(self, head_dim: int):
        self.head_dim = head_dim

    def _layout(self, x: torch.Tensor) -> Layout:
        b, d, h, w, c = x.shape
        if c % self.head_dim:
            raise ValueError(f"{c} channels are not divisible by head_dim={self.head_dim}")
        return Layout(b, (d, h, w), (d, h, w), c // self.head_dim, self.head_dim, (d, h, w))

    def matricize(self, x: torch.Tensor) -> tuple[torch.Tensor, Layout]:
        lay = self._layout(x)
        b, (d, h, w) = lay.batch, lay.spatial
        mats = x.reshape(b, d * h * w, lay.heads, lay.head_dim).permute(0, 2, 3, 1)
        return mats.reshape(b * lay.heads, lay.head_dim, d * h * w), lay

    def dematricize(self, mats: torch.Tensor, lay: Layout) -> torch.Tensor:
        b, (d, h, w) = lay.batch, lay.spatial
        x = mats.reshape(b, lay.heads, lay.head_dim, d * h * w).permute(0, 3, 1, 2)
        return x.reshape(b, d, h, w, lay.heads * lay.head_dim)

    def reconstruct(self, u: torch.Tensor, v: torch.Tensor, lay: Layout) -> torch.Tensor:
        """``dematricize(U Vᵀ)``, computed per window as one matrix product (see ``_window_products``)."""
        b, (d, h, w) = lay.batch, lay.spatial
        return _window_products(u, v, lay).reshape(b, d, h, w, lay.heads * lay.head_dim)

    def add_projected(self, z: torch.Tensor, nmf, weight: torch.Tensor, out: torch.Tensor,
                      capture: bool = False):
        """Inference: ``out += reconstruct(NMF(matricize(z))) @ weightᵀ`` in place (and the factor
        maps if asked). A whole-volume matrix has no smaller unit to work in, so this is the plain
        computation with the projection accumulated into ``out``."""
        mats, lay = self.matricize(z)
        u, v = nmf.decompose(mats)
        y = self.reconstruct(u, v, lay)
        out.view(-1, out.shape[-1]).addmm_(y.view(-1, y.shape[-1]), weight.t())
        return self.factor_maps(v, lay) if capture else None

    def factor_maps(self, v: torch.Tensor, lay: Layout) -> torch.Tensor:
        """``V (B·heads, N, R)`` → ``(B, heads·R, D, H, W)``."""
        b, (d, h, w) = lay.batch, lay.spatial
        rank = v.shape[-1]
        return v.reshape(b, lay.heads, d, h, w, rank).movedim(-1, 2).reshape(b, lay.heads * rank, d, h, w)


class LocalMatricize:
    """Non-overlapping ``P³`` windows: local context with a locality bias."""

    name = "local"

    def __init__(self, head_dim: int, window: int):
        self.head_dim, self.window = head_dim, window

    def _layout(self, x: torch.Tensor) -> Layout:
        b, d, h, w, c = x.shape
        if c % self.head_dim:
            raise ValueError(f"{c} channels are not divisible by head_dim={self.head_dim}")
        p = self.window
        padded = tuple(-(-s // p) * p for s in (d, h, w))
        return Layout(b, (d, h, w), padded, c // self.head_dim, self.head_dim, (p, p, p))

    def _pad(self, x: torch.Tensor, lay: Layout) -> torch.Tensor:
        if lay.padded == lay.spatial:
            return x
        pad = [0, 0]  # channels (last axis)
        for s, ps in zip(reversed(lay.spatial), reversed(lay.padded)):
            pad += [0, ps - s]
        return F.pad(x, pad)

    def _windows(self, x: torch.Tensor, lay: Layout) -> torch.Tensor:
        """View of a padded map as ``(b, gd, gh, gw, heads, E, p, p, p)`` (no copy)."""
        b, (pd, ph, pw), p = lay.batch, lay.padded, lay.window[0]
        x = x.reshape(b, pd // p, p, ph // p, p, pw // p, p, lay.heads, lay.head_dim)
        return x.permute(0, 1, 3, 5, 7, 8, 2, 4, 6)

    def _split(self, x: torch.Tensor, lay: Layout) -> torch.Tensor:
        """Padded map → ``(B·windows·heads, E, P³)``."""
        return self._windows(x, lay).reshape(-1, lay.head_dim, lay.window[0] ** 3)

    def _merge(self, mats: torch.Tensor, lay: Layout, channels: int) -> torch.Tensor:
        """Inverse of :meth:`_split` for ``channels`` rows per head (E for data, R for factors)."""
        b, (pd, ph, pw), p = lay.batch, lay.padded, lay.window[0]
        gd, gh, gw = pd // p, ph // p, pw // p
        x = mats.reshape(b, gd, gh, gw, lay.heads, channels, p, p, p)
        x = x.permute(0, 1, 6, 2, 7, 3, 8, 4, 5)  # b, gd, p, gh, p, gw, p, heads, ch
        return x.reshape(b, pd, ph, pw, lay.heads * channels)

    def _crop(self, x: torch.Tensor, lay: Layout) -> torch.Tensor:
        d, h, w = lay.spatial
        return x if lay.padded == lay.spatial else x[:, :d, :h, :w]

    def matricize(self, x: torch.Tensor) -> tuple[torch.Tensor, Layout]:
        lay = self._layout(x)
        return self._split(self._pad(x, lay), lay), lay

    def _window_view(self, y: torch.Tensor, lay: Layout) -> torch.Tensor:
        """Window-major ``(windows, P³, C)`` data viewed as ``(b, gd, p, gh, p, gw, p, C)``."""
        b, (pd, ph, pw), p = lay.batch, lay.padded, lay.window[0]
        y = y.reshape(b, pd // p, ph // p, pw // p, p, p, p, y.shape[-1])
        return y.permute(0, 1, 4, 2, 5, 3, 6, 7)

    def reconstruct(self, u: torch.Tensor, v: torch.Tensor, lay: Layout) -> torch.Tensor:
        """``dematricize(U Vᵀ)`` without materialising the reconstructed matrices."""
        y = self._window_view(_window_products(u, v, lay), lay)
        return self._crop(y.reshape(lay.batch, *lay.padded, y.shape[-1]), lay)

    def dematricize(self, mats: torch.Tensor, lay: Layout) -> torch.Tensor:
        return self._crop(self._merge(mats, lay, lay.head_dim), lay)

    # -- eager inference: the sub-block's projected output added straight into the residual stream
    def partitions(self) -> list[tuple[int, float]]:
        """(shift, weight) of each window partition whose reconstructions are summed."""
        return [(0, 1.0)]

    def add_projected(self, z: torch.Tensor, nmf, weight: torch.Tensor, out: torch.Tensor,
                      capture: bool = False):
        """Inference: ``out += reconstruct(NMF(matricize(z))) @ weightᵀ`` in place, computed one
        row of windows (a ``P``-thick slab) at a time, and the factor maps if asked.

        Windows are independent, so slabs give the same result while every temporary stays a
        slab in size. Each slab is gathered once into window-major ``(windows, P³, C)`` rows (whole
        channel rows: a copy at memory speed); the NMF and the projection then work on those rows
        by batched matrix products (see :meth:`_project_slab`), and the result is added back to
        where each voxel came from. No reconstructed map, matrix batch or rolled copy of the
        full-resolution map is ever built."""
        lay = self._layout(z)
        zp = self._pad(z, lay)
        padded = lay.padded != lay.spatial
        target = out.new_zeros(*zp.shape[:-1], out.shape[-1]) if padded else out
        maps = zp.new_zeros(lay.batch, lay.heads * nmf.rank, *lay.padded) if capture else None
        p, depth = self.window, lay.padded[0]
        for shift, scale in self.partitions():
            if self._add_native(zp, nmf, weight, target, maps, shift, scale):
                continue
            for i0 in range(0, depth, p):
                # slab row r holds map row (i0 - shift + r) mod depth, rolled by ``shift`` in-plane
                rows = _wrapped_rows(i0 - shift, p, depth)
                if shift == 0:
                    slab = zp[:, i0:i0 + p]
                else:
                    slab = zp.new_empty(zp.shape[0], p, *zp.shape[2:])
                    for dst, src in rows:
                        roll_spatial(zp[:, src], shift, (2, 3), into=slab[:, dst])
                contrib, vt, sl = self._project_slab(slab, nmf, weight, scale, capture)
                contrib = self._window_view(contrib, sl)
                if shift == 0:
                    target[:, i0:i0 + p].view(contrib.shape).add_(contrib)
                else:
                    natural = contrib.reshape(slab.shape[:-1] + contrib.shape[-1:])
                    for dst, src in rows:
                        roll_spatial(natural[:, dst], -shift, (2, 3), into=target[:, src], add=True)
                if capture:
                    vt = self._window_view(vt, sl).permute(0, 7, 1, 2, 3, 4, 5, 6)
                    if shift == 0:
                        maps[:, :, i0:i0 + p].view(vt.shape).add_(vt)
                    else:
                        natural = vt.reshape(*vt.shape[:2], *slab.shape[1:4])
                        for dst, src in rows:
                            roll_spatial(natural[:, :, dst], -shift, (3, 4), into=maps[:, :, src], add=True)
        if padded:
            out += self._crop(target, lay)
        return _crop_maps(maps, lay) if capture else None

    def _add_native(self, zp, nmf, weight, target, maps, shift: int, scale: float) -> bool:
        """One partition by the compiled kernel (``nn/native.py``) when it is available and the NMF
        is rank-1 HALS: the same arithmetic as :meth:`_project_slab`, window by window in cache."""
        if not nmf.uses_moments() or nmf.keep is not None:   # the kernel can drop a head, not keep one
            return False
        e, n = self.head_dim, self.window ** 3
        _, v0 = initial_factors(e, n, 1, nmf.seed, dtype=zp.dtype)
        return native.window_nmf_rank1(
            zp, target, maps, heads=zp.shape[-1] // self.head_dim, window=self.window, shift=shift,
            weight=weight, v0=v0.reshape(-1), iters=nmf.iters, eps=nmf.eps, scale=scale,
            drop_head=None if nmf.drop is None else nmf.drop[1])

    def _project_slab(self, slab: torch.Tensor, nmf, weight: torch.Tensor, scale: float, capture: bool):
        """One padded slab ``(B, P, H, W, C)`` → ``scale · reconstruction @ weightᵀ`` window-major
        ``(windows, P³, C)``, the scaled spatial factors ``(windows, P³, heads·R)`` if ``capture``,
        and the slab's layout.

        Rank-1 HALS (every preset) never forms the E×P³ matrices: the heads' Gram matrices are the
        diagonal blocks of one ``C×C`` product per window, the iterations run on them
        (:func:`rank1_hals_from_moments`), and since the reconstruction ``u vᵀ`` with
        ``v = (Xᵀu + eps)/c`` is linear in X, reconstruction and projection fold into one ``C×C``
        matrix per window: one more product over the window's rows gives the sub-block's output.
        Other ranks and solvers run the generic :meth:`NMF.decompose` on the gathered rows."""
        lay = self._layout(slab)
        heads, e = lay.heads, lay.head_dim
        zw = self._as_window_major(slab, lay).reshape(-1, self.window ** 3, slab.shape[-1])
        k, n, c = zw.shape
        if not nmf.uses_moments():
            u, v = nmf.decompose(zw.view(k, n, heads, e).permute(0, 2, 3, 1).reshape(k * heads, e, n))
            contrib = torch.matmul(_window_products(u * scale, v, lay), weight.t())
            vt = v.view(k, heads, n, -1).permute(0, 2, 1, 3).reshape(k, n, -1) * scale if capture else None
            return contrib, vt, lay
        gram = torch.bmm(zw.transpose(1, 2), zw).view(k, heads, e, heads, e)
        gram = gram.diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)         # (k, heads, E, E)
        _, v0 = initial_factors(e, n, 1, nmf.seed, dtype=zw.dtype, device=zw.device)
        moments = torch.matmul(zw.transpose(1, 2), torch.cat([torch.ones_like(v0), v0], 1))
        rowsum, xv0 = moments.view(k, heads, e, 2).unbind(-1)
        u, cc = rank1_hals_from_moments(gram, rowsum, xv0, v0.pow(2).sum(), n, nmf.iters, nmf.eps)
        ud = select_components(nmf, u.reshape(k * heads, e, 1)).view(u.shape)
        # what one unit of a head's v adds to the output channels: scale · W_h u_h   (k, heads, C)
        m = torch.matmul(ud.unsqueeze(-2), weight.view(-1, heads, e).permute(1, 2, 0)).squeeze(-2) * scale
        m = m / cc                                                        # v = (Xᵀu + eps) / c
        fold = (u.unsqueeze(-1) * m.unsqueeze(-2)).reshape(k, c, -1)      # (k, C, C_out)
        contrib = torch.baddbmm((nmf.eps * m.sum(1)).unsqueeze(1), zw, fold)
        vt = None
        if capture:
            blocks = u.unsqueeze(-1) * torch.eye(heads, dtype=u.dtype, device=u.device)[:, None, :]
            vt = (torch.bmm(zw, blocks.reshape(k, c, heads)) + nmf.eps) * (scale / cc.view(k, 1, heads))
        return contrib, vt, lay

    def _as_window_major(self, x: torch.Tensor, lay: Layout) -> torch.Tensor:
        """A padded channels-last map viewed ``(b, gd, gh, gw, p, p, p, C)``: window-major order,
        each window's voxels in (d, h, w) order as in :meth:`_split`; ``reshape`` gathers it."""
        b, (pd, ph, pw), p = lay.batch, lay.padded, lay.window[0]
        x = x.reshape(b, pd // p, p, ph // p, p, pw // p, p, x.shape[-1])
        return x.permute(0, 1, 3, 5, 2, 4, 6, 7)

    def factor_maps(self, v: torch.Tensor, lay: Layout) -> torch.Tensor:
        """``V (B·windows·heads, P³, R)`` → ``(B, heads·R, D, H, W)``."""
        maps = self._crop(self._merge(v.transpose(-1, -2), lay, v.shape[-1]), lay)
        return maps.permute(0, 4, 1, 2, 3)


class ShiftedWindowMatricize(LocalMatricize):
    """Regular and half-window-rolled ``P³`` partitions, processed together and averaged back."""

    name = "swin"
    # out of place (torch.roll/cat): for decomposition tables, which must not write into buffers
    functional = False

    @property
    def shift(self) -> int:
        return self.window // 2

    def matricize(self, x: torch.Tensor) -> tuple[torch.Tensor, Layout]:
        lay = self._layout(x)
        x = self._pad(x, lay)
        if self.functional:
            rolled = torch.roll(x, (self.shift,) * 3, (1, 2, 3))
            return torch.cat([self._split(x, lay), self._split(rolled, lay)]), lay
        # Both partitions are written straight into one buffer: no torch.cat / torch.roll
        # passes over the (large) full-resolution map.
        k = x.numel() // (lay.head_dim * lay.window[0] ** 3)
        mats = x.new_empty(2 * k, lay.head_dim, lay.window[0] ** 3)
        mats[:k].view(self._windows(x, lay).shape).copy_(self._windows(x, lay))
        mats[k:].view(self._windows(x, lay).shape).copy_(self._windows(roll3(x, self.shift), lay))
        return mats, lay

    def _average(self, mats: torch.Tensor, lay: Layout, channels: int) -> torch.Tensor:
        regular, rolled = mats.chunk(2, dim=0)
        # Out of place: a merge can be a view of ``mats`` (one window per axis).
        out = self._merge(regular, lay, channels) + roll3(self._merge(rolled, lay, channels), -self.shift)
        return self._crop(out * 0.5, lay)

    def dematricize(self, mats: torch.Tensor, lay: Layout) -> torch.Tensor:
        return self._average(mats, lay, lay.head_dim)

    def reconstruct(self, u: torch.Tensor, v: torch.Tensor, lay: Layout) -> torch.Tensor:
        # Average of the two partitions, with the ½ folded into the small factor U.
        y = _window_products(u * 0.5, v, lay)
        regular, rolled = (self._window_view(t, lay) for t in y.chunk(2, dim=0))
        shape = (lay.batch, *lay.padded, y.shape[-1])
        if self.functional:
            back = torch.roll(rolled.reshape(shape), (-self.shift,) * 3, (1, 2, 3))
            return self._crop(regular.reshape(shape) + back, lay)
        if torch.is_grad_enabled():  # autograd forbids in-place adds into these views
            return self._crop(regular.reshape(shape) + roll3(rolled.reshape(shape), -self.shift), lay)
        out = roll3(rolled.reshape(shape), -self.shift, add_into=regular.reshape(shape).contiguous())
        return self._crop(out, lay)

    def factor_maps(self, v: torch.Tensor, lay: Layout) -> torch.Tensor:
        return self._average(v.transpose(-1, -2), lay, v.shape[-1]).permute(0, 4, 1, 2, 3)

    def partitions(self) -> list[tuple[int, float]]:
        return [(0, 0.5), (self.shift, 0.5)]  # the average of the regular and the rolled partition


def _window_products(u: torch.Tensor, v: torch.Tensor, lay: Layout) -> torch.Tensor:
    """The reconstruction ``U Vᵀ`` of every head, laid out window-major ``(windows, N, C)``.

    Per window this is one small matrix product, ``V (N, heads·R) @ blockdiag(U) (heads·R, C)``,
    so the output is written once, contiguously, with channels innermost — far less memory
    traffic than forming ``(heads, E, N)`` matrices and permuting them to channels-last.
    """
    rank, heads, e = u.shape[-1], lay.heads, lay.head_dim
    k = u.shape[0] // heads
    n = v.shape[-2]
    eye = torch.eye(heads, dtype=u.dtype, device=u.device)
    # blockdiag[k, (h, r), (h', e)] = δ(h, h') · u[k, h, e, r]
    blockdiag = u.reshape(k, heads, e, rank).permute(0, 1, 3, 2)[:, :, :, None, :] * eye[None, :, None, :, None]
    vs = v.reshape(k, heads, n, rank).permute(0, 2, 1, 3).reshape(k, n, heads * rank)
    return torch.bmm(vs, blockdiag.reshape(k, heads * rank, heads * e))


def _roll_pieces(n: int, shift: int) -> list[tuple[slice, slice]]:
    """(destination, source) slices of a circular roll by ``shift`` along an axis of length n."""
    shift %= n
    if shift == 0:
        return [(slice(0, n), slice(0, n))]
    return [(slice(shift, n), slice(0, n - shift)), (slice(0, shift), slice(n - shift, n))]


def roll_spatial(x: torch.Tensor, shift: int, dims=(1, 2, 3), into: torch.Tensor | None = None,
                 add: bool = False) -> torch.Tensor:
    """``torch.roll`` by ``shift`` along each of ``dims`` in one pass, written into ``into`` (a new
    tensor if None), or added to it with ``add``.

    torch.roll over several axes chains one full copy per axis; this copies the (up to 2^len(dims))
    blocks directly.
    """
    out = x.new_empty(x.shape) if into is None else into
    for pieces in itertools.product(*(_roll_pieces(x.shape[d], shift) for d in dims)):
        dst, src = [slice(None)] * x.dim(), [slice(None)] * x.dim()
        for d, (to, frm) in zip(dims, pieces):
            dst[d], src[d] = to, frm
        if add:
            out[tuple(dst)].add_(x[tuple(src)])
        else:
            out[tuple(dst)].copy_(x[tuple(src)])
    return out


def roll3(x: torch.Tensor, shift: int, add_into: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`roll_spatial` over the three spatial axes of a channels-last map."""
    return roll_spatial(x, shift, (1, 2, 3), into=add_into, add=add_into is not None)


def _wrapped_rows(start: int, count: int, length: int) -> list[tuple[slice, slice]]:
    """(slab rows, map rows) pieces such that slab row r is map row (start + r) mod length."""
    start %= length
    if start + count <= length:
        return [(slice(0, count), slice(start, start + count))]
    head = length - start
    return [(slice(0, head), slice(start, length)), (slice(head, count), slice(0, count - head))]


def _crop_maps(maps: torch.Tensor, lay: Layout) -> torch.Tensor:
    d, h, w = lay.spatial
    return maps[:, :, :d, :h, :w]


MATRICIZERS = {"global": GlobalMatricize, "local": LocalMatricize, "swin": ShiftedWindowMatricize}


def make_matricize(kind: str, head_dim: int, window: int | None = None):
    if kind not in MATRICIZERS:
        raise ValueError(f"unknown matricize {kind!r}; choose one of {sorted(MATRICIZERS)}")
    return GlobalMatricize(head_dim) if kind == "global" else MATRICIZERS[kind](head_dim, window)
