"""A tiny deterministic network for the tests; not part of the library.

``threshold-net``: a fixed 1×1×1 convolution, logits = gain · (x[channel] − threshold), so after
z-scoring a voxel is labelled exactly when its normalised intensity exceeds ``threshold``. With it
the whole real pipeline (files, resampling, cropping, sliding windows, post-processing, writing)
can be tested for geometry without trained weights. ``delay_s`` slows its forward so a test can
interrupt a run mid-inference — which is why it lives here and not in the production registry.

The tests' model files name it ``threshold-net``; :mod:`testnet_hook` adds it to
``LesionFactorizerLib.presets.ARCHITECTURES`` in the test process and in every process the tests
start.
"""

from __future__ import annotations

import time

import torch
from torch import nn

NAME = "threshold-net"


class ThresholdNet(nn.Module):
    has_components = False
    stride = 1   # no downsampling

    def __init__(self, in_channels: int, out_channels: int = 1, channel: int = 0, threshold: float = 1.0,
                 gain: float = 20.0, delay_s: float = 0.0):
        super().__init__()
        self.delay_s = float(delay_s)   # lets tests interrupt a run mid-inference
        self.conv = nn.Conv3d(in_channels, out_channels, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, channel] = gain
            self.conv.bias.fill_(-gain * threshold)

    def forward(self, x: torch.Tensor, all_heads: bool = False):
        if self.delay_s:
            time.sleep(self.delay_s)
        y = self.conv(x)
        return [y] if all_heads else y
