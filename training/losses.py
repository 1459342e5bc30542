"""Training losses: soft Dice + BCE / focal / softmax, with deep supervision.

**Which cross-entropy.** The thesis writes "soft Dice + cross-entropy" (eq. 7.16–7.17) for
sigmoid outputs. The authors' code used MONAI's ``DiceCELoss(sigmoid=True)``, whose CE term is a
*softmax* cross-entropy over the channels with arg-max targets whenever there is more than one
channel — still true in MONAI 1.6 — and exactly 0 for one channel (reference note §4.1). For
nested BraTS regions (ET ⊂ TC ⊂ WT as three sigmoid channels) that mixes background with ET. We
use the principled loss instead: per-channel **binary** cross-entropy on the logits (multi-label),
plus the squared-denominator soft Dice of eq. 7.17 (ε = 1e-5, per sample and channel).
MS (chapter 6): soft Dice + sigmoid focal loss, γ = 2. Chapter 8: soft Dice on softmax outputs
(ε = 1, eq. 8.4).

**Deep supervision.** Head i (resolution 1/2^i) gets weight λ_i = 1, ½, ¼ normalised to sum 1;
its target is the full-resolution target resampled with nearest neighbour to the head's size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SoftDice(nn.Module):
    """1 − (2⟨G,P⟩ + ε)/(‖G‖² + ‖P‖² + ε) per sample and channel, averaged (eq. 7.17); with
    ``per_channel=False`` per sample over the whole (channels × voxels) tensor (eq. 8.4)."""

    def __init__(self, activation: str, smooth: float = 1e-5, squared: bool = True, per_channel: bool = True):
        super().__init__()
        self.activation, self.smooth, self.squared, self.per_channel = activation, smooth, squared, per_channel

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=1)
        dims = tuple(range(2 if self.per_channel else 1, logits.ndim))
        inter = (p * target).sum(dims)
        if self.squared:
            denom = (p * p).sum(dims) + (target * target).sum(dims)
        else:
            denom = p.sum(dims) + target.sum(dims)
        return (1 - (2 * inter + self.smooth) / (denom + self.smooth)).mean()


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """−mean[(1−p_t)^γ log p_t] over voxels and channels (thesis eq. 6.3, binary per channel)."""
    logp = F.logsigmoid(logits)
    log1mp = F.logsigmoid(-logits)
    logpt = target * logp + (1 - target) * log1mp
    return -(((1 - logpt.exp()) ** gamma) * logpt).mean()


class SegmentationLoss(nn.Module):
    """``kind``: dice_bce (sigmoid, multi-label), dice_focal (sigmoid), dice_softmax (one-hot)."""

    def __init__(self, kind: str = "dice_bce", smooth: float = 1e-5, squared: bool = True,
                 focal_gamma: float = 2.0, dice_per_channel: bool = True):
        super().__init__()
        self.kind = kind
        self.focal_gamma = focal_gamma
        self.dice = SoftDice("softmax" if kind == "dice_softmax" else "sigmoid", smooth, squared, dice_per_channel)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = self.dice(logits, target)
        if self.kind == "dice_bce":
            loss = loss + F.binary_cross_entropy_with_logits(logits, target)
        elif self.kind == "dice_focal":
            loss = loss + sigmoid_focal(logits, target, self.focal_gamma)
        return loss


class DeepSupervisionLoss(nn.Module):
    def __init__(self, loss: nn.Module, weights: Sequence[float] = (1.0, 0.5, 0.25)):
        super().__init__()
        self.loss = loss
        self.weights = [float(w) for w in weights]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        n = min(len(outputs), len(self.weights))
        w = self.weights[:n]
        total = sum(w)
        loss = outputs[0].new_zeros((), dtype=torch.float32)
        for out, wi in zip(outputs[:n], w):
            t = target if out.shape[2:] == target.shape[2:] else \
                F.interpolate(target, size=out.shape[2:], mode="nearest")
            loss = loss + (wi / total) * self.loss(out, t)
        return loss
