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

    def factorize_map(self, z: torch.Tensor, nmf, capture: bool = False):
        """``reconstruct`` ∘ ``nmf.decompose`` ∘ ``matricize`` (and the factor maps if asked)."""
        mats, lay = self.matricize(z)
        u, v = nmf.decompose(mats)
        return self.reconstruct(u, v, lay), (self.factor_maps(v, lay) if capture else None)

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

    def factorize_map(self, z: torch.Tensor, nmf, capture: bool = False):
        """Inference: the NMF approximation of ``z``, one row of windows (a ``P``-thick slab) at a
        time. Windows are independent, so slabs give the same result while every temporary stays
        a slab in size (cache-resident, no huge fresh allocations)."""
        lay = self._layout(z)
        y, maps = self._factorize_slabs(self._pad(z, lay), nmf, capture, weight=1.0)
        return self._crop(y, lay), (_crop_maps(maps, lay) if capture else None)

    def _factorize_slab(self, part: torch.Tensor, nmf, capture: bool, weight: float):
        """One padded slab ``(B, P, H, W, C)`` → its window-major reconstruction ``(windows, P³,
        C)`` (and factor maps), scaled by ``weight``."""
        lay = self._layout(part)
        u, v = nmf.decompose(self._split(part, lay))
        maps = LocalMatricize.factor_maps(self, v * weight, lay) if capture else None
        return _window_products(u * weight, v, lay), maps, lay

    def _window_major(self, index: torch.Tensor, lay: Layout) -> torch.Tensor:
        """A padded map's voxel indices ``(D·H·W,)`` re-listed in window-major order."""
        (pd, ph, pw), p = lay.padded, self.window
        return index.view(pd // p, p, ph // p, p, pw // p, p).permute(0, 2, 4, 1, 3, 5).reshape(-1)

    def _factorize_slabs(self, zp: torch.Tensor, nmf, capture: bool, weight: float):
        p = self.window
        y = torch.empty_like(zp)
        maps = None
        for i0 in range(0, zp.shape[1], p):
            ys, ms, lay = self._factorize_slab(zp[:, i0:i0 + p], nmf, capture, weight)
            # written straight from the window-major products into the slab: one copy
            y[:, i0:i0 + p].view(self._window_view(ys, lay).shape).copy_(self._window_view(ys, lay))
            if capture:
                if maps is None:
                    maps = zp.new_empty(ms.shape[0], ms.shape[1], *zp.shape[1:4])
                maps[:, :, i0:i0 + p] = ms
        return y, maps

    def factor_maps(self, v: torch.Tensor, lay: Layout) -> torch.Tensor:
        """``V (B·windows·heads, P³, R)`` → ``(B, heads·R, D, H, W)``."""
        maps = self._crop(self._merge(v.transpose(-1, -2), lay, v.shape[-1]), lay)
        return maps.permute(0, 4, 1, 2, 3)


class ShiftedWindowMatricize(LocalMatricize):
    """Regular and half-window-rolled ``P³`` partitions, processed together and averaged back."""

    name = "swin"

    @property
    def shift(self) -> int:
        return self.window // 2

    def matricize(self, x: torch.Tensor) -> tuple[torch.Tensor, Layout]:
        lay = self._layout(x)
        x = self._pad(x, lay)
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
        if torch.is_grad_enabled():  # autograd forbids in-place adds into these views
            return self._crop(regular.reshape(shape) + roll3(rolled.reshape(shape), -self.shift), lay)
        out = roll3(rolled.reshape(shape), -self.shift, add_into=regular.reshape(shape).contiguous())
        return self._crop(out, lay)

    def factor_maps(self, v: torch.Tensor, lay: Layout) -> torch.Tensor:
        return self._average(v.transpose(-1, -2), lay, v.shape[-1]).permute(0, 4, 1, 2, 3)

    def factorize_map(self, z: torch.Tensor, nmf, capture: bool = False):
        """Inference, slab by slab (see ``LocalMatricize.factorize_map``): the regular windows,
        then each slab of the rolled partition. A rolled slab is gathered from the circularly
        shifted rows/columns with one ``index_select`` and its reconstruction is added back to
        where each voxel came from with one ``index_add_`` — the roll never costs a pass."""
        lay = self._layout(z)
        zp = self._pad(z, lay)
        y, maps = self._factorize_slabs(zp, nmf, capture, weight=0.5)
        b, depth, height, width, c = zp.shape
        p, s = self.window, self.shift
        flat_z, flat_y = zp.reshape(b, -1, c), y.view(b, -1, c)
        hh = (torch.arange(height, device=z.device) - s) % height
        ww = (torch.arange(width, device=z.device) - s) % width
        plane = (hh[:, None] * width + ww[None, :]).reshape(-1)  # rolled (h, w) → source
        for i0 in range(0, depth, p):
            rows = (torch.arange(i0 - s, i0 - s + p, device=z.device) % depth)
            index = (rows[:, None] * (height * width) + plane[None, :]).reshape(-1)  # (P·H·W,)
            part = flat_z.index_select(1, index).view(b, p, height, width, c)
            ys, ms, slab = self._factorize_slab(part, nmf, capture, weight=0.5)
            # the products are window-major; list the destinations in the same order
            flat_y.index_add_(1, self._window_major(index, slab), ys.view(b, -1, c))
            if capture:
                maps.view(b, ms.shape[1], -1).index_add_(2, index, ms.reshape(b, ms.shape[1], -1))
        return self._crop(y, lay), (_crop_maps(maps, lay) if capture else None)


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


def roll_spatial(x: torch.Tensor, shift: int, dims=(1, 2, 3), add_into: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.roll`` by ``shift`` along each of ``dims`` in one pass.

    torch.roll over several axes chains one full copy per axis; this copies the (up to 2^len(dims))
    blocks directly. With ``add_into``, the rolled tensor is added to that tensor instead.
    """
    out = x.new_empty(x.shape) if add_into is None else add_into
    for pieces in itertools.product(*(_roll_pieces(x.shape[d], shift) for d in dims)):
        dst, src = [slice(None)] * x.dim(), [slice(None)] * x.dim()
        for d, (to, frm) in zip(dims, pieces):
            dst[d], src[d] = to, frm
        if add_into is None:
            out[tuple(dst)].copy_(x[tuple(src)])
        else:
            out[tuple(dst)].add_(x[tuple(src)])
    return out


def roll3(x: torch.Tensor, shift: int, add_into: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`roll_spatial` over the three spatial axes of a channels-last map."""
    return roll_spatial(x, shift, (1, 2, 3), add_into)


def _crop_maps(maps: torch.Tensor, lay: Layout) -> torch.Tensor:
    d, h, w = lay.spatial
    return maps[:, :, :d, :h, :w]


MATRICIZERS = {"global": GlobalMatricize, "local": LocalMatricize, "swin": ShiftedWindowMatricize}


def make_matricize(kind: str, head_dim: int, window: int | None = None):
    if kind not in MATRICIZERS:
        raise ValueError(f"unknown matricize {kind!r}; choose one of {sorted(MATRICIZERS)}")
    return GlobalMatricize(head_dim) if kind == "global" else MATRICIZERS[kind](head_dim, window)
