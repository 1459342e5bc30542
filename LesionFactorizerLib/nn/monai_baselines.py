"""Table 7.1's baselines with public implementations, built from MONAI: nnU-Net (as MONAI's
``DynUNet``), UNETR and Swin UNETR, behind the interface the pipeline and the trainer use
(``stride``, ``forward(x, all_heads=False)``, any input size).

MONAI is imported when one is built (it is in the ``training`` extra, not a dependency of the
inference library): these are research baselines for side-by-side training, and a model file of one
loads wherever MONAI is installed.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from LesionFactorizerLib.core.errors import UserError

NETWORKS = ("dynunet", "unetr", "swin-unetr")


def _monai_nets():
    try:
        from monai.networks import nets
    except ImportError:
        raise UserError("the MONAI baselines (dynunet, unetr, swin-unetr) need MONAI: "
                        "pip install \"lesion-factorizer[training]\"") from None
    return nets


class MonaiBaseline(nn.Module):
    """One MONAI network. Inputs are zero-padded to a multiple of ``stride`` (UNETR: to its fixed
    ``img_size``, which its position embedding needs) and the logits cropped back.

    ``dynunet`` trains with deep supervision as nnU-Net does: ``forward(x, all_heads=True)`` returns
    the full-resolution head and the ``deep_supr_num`` coarser heads (MONAI upsamples them to full
    size); the others have one head."""

    def __init__(self, network: str, in_channels: int, out_channels: int, **kwargs: Any):
        super().__init__()
        nets = _monai_nets()
        self.network = network
        if network == "dynunet":
            self.net = nets.DynUNet(3, in_channels, out_channels, **kwargs)
            self.stride = math.prod(int(s) for s in kwargs["strides"])
        elif network == "unetr":
            self.net = nets.UNETR(in_channels, out_channels, **kwargs)
            self.img_size = tuple(kwargs["img_size"]) if isinstance(kwargs["img_size"], (list, tuple)) \
                else (int(kwargs["img_size"]),) * 3
            self.stride = 16   # its patch size
        elif network == "swin-unetr":
            # SwinUNETR reads its drop-path rates with .item(), which the meta device (where model
            # files' shapes are checked) cannot do: built on the CPU there, then moved to meta.
            on_meta = torch.empty(0).is_meta
            with torch.device("cpu") if on_meta else contextlib.nullcontext():
                self.net = nets.SwinUNETR(in_channels=in_channels, out_channels=out_channels, **kwargs)
            if on_meta:
                self.net = self.net.to("meta")
            self.stride = 32
        else:
            raise ValueError(f"unknown MONAI baseline {network!r}; choose one of {NETWORKS}")

    def _target_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        if self.network == "unetr":
            if any(n > m for n, m in zip(size, self.img_size)):
                raise ValueError(f"UNETR takes inputs up to its img_size {self.img_size}, got {size}")
            return self.img_size
        return tuple(-(-n // self.stride) * self.stride for n in size)

    def forward(self, x: torch.Tensor, all_heads: bool = False):
        size = tuple(x.shape[2:])
        target = self._target_size(size)
        if target != size:
            pad = []
            for n, t in zip(reversed(size), reversed(target)):
                pad += [0, t - n]
            x = F.pad(x, pad)
        out = self.net(x)
        crop = (..., *(slice(0, n) for n in size))
        if out.dim() == 6:   # DynUNet training: (B, 1 + deep_supr_num, C, D, H, W)
            heads = [out[:, i][crop].contiguous() for i in range(out.shape[1])]
            return heads if all_heads else heads[0]
        out = out[crop].contiguous()
        return [out] if all_heads else out


def dynunet(**kwargs: Any) -> MonaiBaseline:
    return MonaiBaseline("dynunet", **kwargs)


def unetr(**kwargs: Any) -> MonaiBaseline:
    return MonaiBaseline("unetr", **kwargs)


def swin_unetr(**kwargs: Any) -> MonaiBaseline:
    return MonaiBaseline("swin-unetr", **kwargs)
