"""The U-shaped skeleton shared by every network of the thesis, and the convolutional blocks.

Skeleton (thesis 6.3 / 7.3.2, measured in the authors' code): a bias-free 3×3×3 stem, five
resolution levels with one block each (widths 32…512), bias-free k2s2 convolutions down, k2s2
transposed convolutions up, skip concatenated *before* the upsampled tensor, a block 2C→C per
decoder level, and 1×1×1 deep-supervision heads on the three finest decoder levels. Only the
full-resolution head is used at inference.

Blocks are chosen by name, so U-Net, Res-U-Net, Pre-U-Net and the Factorizers are the same class
with a different block (Factorizer blocks live in ``factorizer.py``).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from LesionFactorizerLib.core.layout import layer_names  # noqa: F401  (torch-free home, re-exported)

LEAKY_SLOPE = 0.01
GROUPS = 8


def _conv3(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, padding=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels)


class DoubleConv(nn.Module):
    """U-Net block: (conv → GroupNorm → LeakyReLU) × 2."""

    def __init__(self, cin: int, cout: int, **_):
        super().__init__()
        self.body = nn.Sequential(
            _conv3(cin, cout), _norm(cout), nn.LeakyReLU(LEAKY_SLOPE),
            _conv3(cout, cout), _norm(cout), nn.LeakyReLU(LEAKY_SLOPE),
        )

    def forward(self, x):
        return self.body(x)


class BasicBlock(nn.Module):
    """Res-U-Net block: conv → GN → act → conv → GN, plus shortcut, then act."""

    def __init__(self, cin: int, cout: int, **_):
        super().__init__()
        self.conv1, self.norm1 = _conv3(cin, cout), _norm(cout)
        self.conv2, self.norm2 = _conv3(cout, cout), _norm(cout)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.shortcut = nn.Conv3d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x):
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class PreActivationBlock(nn.Module):
    """Pre-U-Net block (thesis 6.3): GN → act first; the projection shortcut (2C→C) reads the
    pre-activated tensor, the identity shortcut the raw input; no activation after the sum."""

    def __init__(self, cin: int, cout: int, **_):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), _conv3(cin, cout)
        self.norm2, self.conv2 = _norm(cout), _conv3(cout, cout)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.shortcut = nn.Conv3d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x):
        pre = self.act(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        y = self.conv1(pre)
        y = self.conv2(self.act(self.norm2(y)))
        return y + skip


CONV_BLOCKS: dict[str, type[nn.Module]] = {
    "double": DoubleConv,
    "basic": BasicBlock,
    "preact": PreActivationBlock,
}

# Block factory: (cin, cout, level, role) -> module; role is "encoder", "bridge" or "decoder".
BlockFactory = Callable[[int, int, int, str], nn.Module]
# How the skeleton runs one block: (name, input, skip connection or None) -> output.
BlockCall = Callable[[str, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class UShapedNet(nn.Module):
    """Five-level U-Net skeleton with a pluggable block; see the module docstring.

    Accepts any spatial size: the input is zero-padded to a multiple of the total stride and the
    output cropped back. ``forward(x)`` returns full-resolution logits; ``forward(x,
    all_heads=True)`` the deep-supervision list ``[full, 1/2, 1/4]``.
    """

    has_components = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int],
        make_block: BlockFactory,
        deep_supervision: int = 3,
        channels_last: bool = False,
    ):
        super().__init__()
        widths = list(widths)
        self.levels = len(widths)
        self.channels_last = channels_last
        self.stem = nn.Conv3d(in_channels, widths[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            nn.Conv3d(widths[i - 1], widths[i], 2, stride=2, bias=False) for i in range(1, self.levels)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in range(self.levels - 1)
        )
        self.blocks = nn.ModuleDict()
        for name, level, role in layer_names(self.levels):
            cin = 2 * widths[level] if role == "decoder" else widths[level]
            self.blocks[name] = make_block(cin, widths[level], level, role)
        self.heads = nn.ModuleList(nn.Conv3d(widths[i], out_channels, 1) for i in range(deep_supervision))

    @property
    def stride(self) -> int:
        return 2 ** (self.levels - 1)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        size = tuple(x.shape[2:])
        s = self.stride
        pad = []
        for n in reversed(size):
            pad += [0, math.ceil(n / s) * s - n]
        if any(pad):
            x = F.pad(x, pad)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x, size

    def _features(self, x: torch.Tensor, call: BlockCall | None = None) -> list[torch.Tensor]:
        """Decoder outputs from the finest level up, and runs every block in order.

        ``call(name, h, skip)`` runs each block in place of :meth:`run_block` (``skip``: a decoder's
        skip connection, else None); it may return a larger batch than it got, e.g. one copy of the
        windows per variant of that block, and later blocks then see that batch."""
        call = call or self.run_block
        skips = []
        h = self.stem(x)
        for level in range(self.levels):
            if level > 0:
                h = self.down[level - 1](h)
            name = "bridge" if level == self.levels - 1 else f"encoder{level + 1}"
            h = call(name, h, None)
            skips.append(h)
        outs = [h]
        for level in reversed(range(self.levels - 1)):
            h = call(f"decoder{level + 1}", self.up[level](h), skips[level])
            outs.append(h)
        return outs[::-1]  # finest first

    def run_block(self, name: str, h: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Block ``name`` on ``h`` (a decoder: the upsampled tensor with its ``skip`` connection)."""
        return self.blocks[name](h) if skip is None else self._decode(self.blocks[name], skip, h)

    def _decode(self, block: nn.Module, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """A decoder block on the skip connection concatenated before the upsampled tensor."""
        return block(torch.cat([skip, up], dim=1))

    def forward(self, x: torch.Tensor, all_heads: bool = False, call: BlockCall | None = None):
        x, size = self._pad(x)
        feats = self._features(x, call)
        n_heads = len(self.heads) if all_heads else 1
        outs = []
        for i in range(n_heads):
            s = 2**i
            crop = tuple(slice(0, math.ceil(n / s)) for n in size)
            outs.append(self.heads[i](feats[i])[(..., *crop)].contiguous())
        return outs if all_heads else outs[0]


def conv_block_factory(block: str) -> BlockFactory:
    if block not in CONV_BLOCKS:
        raise ValueError(f"unknown block {block!r}; choose one of {sorted(CONV_BLOCKS)}")
    cls = CONV_BLOCKS[block]
    return lambda cin, cout, level, role: cls(cin, cout)


class UNet(UShapedNet):
    """U-Net / Res-U-Net / Pre-U-Net (thesis chapter 6) by ``block`` = double / basic / preact."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block: str = "double",
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        deep_supervision: int = 3,
    ):
        super().__init__(in_channels, out_channels, widths, conv_block_factory(block), deep_supervision)
