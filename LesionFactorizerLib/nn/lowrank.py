"""Low-rank (CP) convolutions and the chapter-8 Res-U-Net built from them.

:class:`LowRankConv3d` (thesis 8.3.3) learns a 3-D kernel as a sum of ``R`` rank-1 tensors,
``W = Σ_r u_out ∘ u_in ∘ u_h ∘ u_w ∘ u_d``, with ``R = round(α·C_in)`` — a regulariser with far
fewer parameters than an ordinary convolution. Training rebuilds the kernel each forward pass and
uses it as an ordinary convolution (the thesis's formulation). Inference runs the factors
themselves — a 1×1×1 convolution C_in→R, one depthwise 1-D convolution along each spatial axis, a
1×1×1 convolution R→C_out — the same linear map (zero padding factorises per axis) at
``R·(C_in + 3k + C_out)`` instead of ``C_out·C_in·k³`` multiply-adds per voxel.

:class:`ResUNet8` is the thesis's chapter-8 network in the one reading of 8.3.2 whose parameter
count (:func:`~LesionFactorizerLib.presets.count_parameters`) is the reported 92.2 M: five levels of width F·2^l, max-pool
down, 3×3×3 stride-2 transposed convolutions up, concatenated skips, one ResNet block per stage
(two 3×3×3 convolutions with bias, InstanceNorm, LeakyReLU, a 1×1×1 projection shortcut with bias),
a 1×1×1 head. With ``alpha`` set, both 3×3×3 convolutions of every block except level 0's are
low-rank; shortcuts and transposed convolutions stay ordinary (the thesis does not say; these
choices give 21.07 M parameters against its 20.8 M).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LowRankConv3d(nn.Module):
    """3-D convolution with a CP-factorised kernel of rank ``rank`` (stride 1, 'same' padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, rank: int | None = None,
                 alpha: float = 0.5, bias: bool = True):
        super().__init__()
        self.rank = int(rank) if rank is not None else max(1, round(alpha * in_channels))
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        r, k = self.rank, kernel_size
        self.u_out = nn.Parameter(torch.empty(out_channels, r))
        self.u_in = nn.Parameter(torch.empty(in_channels, r))
        self.u_h = nn.Parameter(torch.empty(k, r))
        self.u_w = nn.Parameter(torch.empty(k, r))
        self.u_d = nn.Parameter(torch.empty(k, r))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.factored = True  # inference runs the factors (forward_factored); False: the dense kernel
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Match the variance of PyTorch's default conv init, Var(w) = 1/(3·fan_in): a kernel entry
        # is a sum of R products of 5 independent factor entries, so Var = R·s¹⁰.
        fan_in = self.in_channels * self.kernel_size**3
        std = (1.0 / (3.0 * fan_in * self.rank)) ** 0.1
        for p in (self.u_out, self.u_in, self.u_h, self.u_w, self.u_d):
            nn.init.normal_(p, 0.0, std)
        if self.bias is not None:
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def kernel(self) -> torch.Tensor:
        """The full ``(C_out, C_in, k, k, k)`` kernel.

        Contracted smallest-first — spatial modes, then C_in, then one matrix product with C_out —
        so no intermediate is larger than the kernel (a naive five-way einsum can build a
        C_out×C_in×R tensor: gigabytes for the 960-channel layers)."""
        k, r = self.kernel_size, self.rank
        spatial = torch.einsum("hr,wr,dr->hwdr", self.u_h, self.u_w, self.u_d).reshape(k**3, r)
        inner = (self.u_in[:, None, :] * spatial[None]).reshape(-1, r)  # (C_in·k³, R)
        return (self.u_out @ inner.T).reshape(self.out_channels, self.in_channels, k, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factored and not torch.is_grad_enabled():
            return self.forward_factored(x)
        return F.conv3d(x, self.kernel(), self.bias, padding=self.kernel_size // 2)

    def forward_factored(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution as its CP factors (see the module docstring); equals the dense path up
        to float rounding. Kernel axes 2, 3, 4 carry ``u_h``, ``u_w``, ``u_d`` (see :meth:`kernel`).

        Runs on channels-last rows: the two 1×1×1 convolutions are matrix products over voxels and
        each depthwise 1-D convolution is k shifted multiply-adds. Profiled on CPU (1 thread, 120
        channels, 32³), ``F.conv3d`` took 3× longer for the 1×1×1 C_in→R step (its output left
        channels-last, so every later layer converted layouts back) and ~2× longer per depthwise
        pass; the output here stays in ``channels_last_3d`` memory like the dense layers'."""
        b, _, d, h, w = x.shape
        r = self.rank
        rows = x.permute(0, 2, 3, 4, 1).reshape(-1, self.in_channels)    # a view for channels-last x
        y = (rows @ self.u_in).view(b, d, h, w, r)                          # C_in → R
        for axis, factor in ((1, self.u_h), (2, self.u_w), (3, self.u_d)):  # depthwise 1-D, zero padded
            y = _depthwise_taps(y, axis, factor)
        y = y.reshape(-1, r)
        out = (torch.addmm(self.bias, y, self.u_out.T) if self.bias is not None else y @ self.u_out.T)  # R → C_out
        return out.view(b, d, h, w, self.out_channels).permute(0, 4, 1, 2, 3)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}"


def _depthwise_taps(y: torch.Tensor, axis: int, taps: torch.Tensor) -> torch.Tensor:
    """Depthwise 1-D cross-correlation of channels-last ``y`` (…, R) along ``axis`` with the
    ``(k, R)`` ``taps``, zero padded to the same size (``F.conv3d(..., groups=R, padding=k//2)``)."""
    k, n = taps.shape[0], y.shape[axis]
    c = k // 2
    out = y * taps[c]
    for j in range(k):
        off = j - c   # out[i] += taps[j] · y[i + off]
        if j == c or abs(off) >= n:
            continue
        dst = out.narrow(axis, max(0, -off), n - abs(off))
        dst.addcmul_(y.narrow(axis, max(0, off), n - abs(off)), taps[j])
    return out


def _eager_inference() -> bool:
    """Eager inference: where the layouts below pay off. Autograd and graph capture
    (``torch.compile``, ``torch.export``, ONNX) get the plain modules."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (no affine, no running statistics: no state) that keeps
    ``channels_last_3d`` memory in eager inference on one sample. PyTorch's instance norm makes a
    channels-last input contiguous first (several times slower than on a contiguous input), and the
    next convolution then reorders it back; for one sample the instance statistics are the batch
    statistics, and ``batch_norm`` has a channels-last kernel (as fast as the contiguous path,
    output equal within float rounding; ``benchmarks/bench_lowrank.py`` times the network)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[0] == 1 and not self.affine and not self.track_running_stats and _eager_inference()
                and x.is_contiguous(memory_format=torch.channels_last_3d)):
            return F.batch_norm(x, None, None, training=True, eps=self.eps)
        return super().forward(x)


def _conv3(cin: int, cout: int, alpha: float | None) -> nn.Module:
    if alpha is None:
        return nn.Conv3d(cin, cout, 3, padding=1)
    return LowRankConv3d(cin, cout, 3, alpha=alpha)


class ResBlock8(nn.Module):
    """Chapter-8 ResNet block: conv → IN → LReLU → conv → IN, + 1×1 shortcut, → LReLU."""

    def __init__(self, cin: int, cout: int, alpha: float | None = None):
        super().__init__()
        self.conv1, self.norm1 = _conv3(cin, cout, alpha), InstanceNorm3d(cout)
        self.conv2, self.norm2 = _conv3(cout, cout, alpha), InstanceNorm3d(cout)
        self.shortcut = nn.Conv3d(cin, cout, 1)
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x):
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class ResUNet8(nn.Module):
    """The chapter-8 Res-U-Net (``alpha=None``) or its low-rank version (``alpha`` = R / C_in)."""

    has_components = False

    def __init__(self, in_channels: int, out_channels: int, features: int = 60, levels: int = 5,
                 alpha: float | None = None):
        super().__init__()
        widths = [features * 2**i for i in range(levels)]
        self.levels = levels
        self.encoder = nn.ModuleList(
            ResBlock8(in_channels if i == 0 else widths[i - 1], widths[i], None if i == 0 else alpha)
            for i in range(levels)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(widths[i + 1], widths[i], 3, stride=2, padding=1, output_padding=1)
            for i in range(levels - 1)
        )
        self.decoder = nn.ModuleList(
            ResBlock8(2 * widths[i], widths[i], None if i == 0 else alpha) for i in range(levels - 1)
        )
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    @property
    def stride(self) -> int:
        """Total downsampling: inputs are padded to a multiple of it."""
        return 2 ** (self.levels - 1)

    def _weights_channels_last(self) -> None:
        """Dense convolution weights in ``channels_last_3d`` memory, like the activations: oneDNN
        then uses them without a reorder per call (the whole forward is faster: ``benchmarks/bench_lowrank.py``). The same
        values, changed once; training is layout-agnostic and the model savers write
        ``.contiguous()`` copies."""
        for layer in self.modules():
            if isinstance(layer, (nn.Conv3d, nn.ConvTranspose3d)) and layer.weight.dim() == 5 and \
                    not layer.weight.is_contiguous(memory_format=torch.channels_last_3d):
                layer.weight.data = layer.weight.data.contiguous(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor, all_heads: bool = False):
        size = x.shape[2:]
        s = self.stride
        pad = []
        for n in reversed(size):
            pad += [0, -(-n // s) * s - n]
        h = F.pad(x, pad) if any(pad) else x
        if not torch.is_grad_enabled():
            # Inference runs channels-last: the depthwise 1-D convolutions of the CP factors are
            # several times faster on contiguous channel rows (and the dense convolutions no slower).
            h = h.contiguous(memory_format=torch.channels_last_3d)
            if _eager_inference():
                self._weights_channels_last()
        skips = []
        for i, block in enumerate(self.encoder):
            h = block(F.max_pool3d(h, 2) if i > 0 else h)
            skips.append(h)
        for i in reversed(range(self.levels - 1)):
            h = self.decoder[i](torch.cat([skips[i], self.up[i](h)], dim=1))
        out = self.head(h)[..., : size[0], : size[1], : size[2]].contiguous()
        return [out] if all_heads else out
