"""Performer baseline (thesis 4.4.5, Table 7.1): the Factorizer's U-shaped network and blocks with
FAVOR+ self-attention over all voxels in place of the Wrapped NMF.

FAVOR+ (Choromanski et al., "Rethinking Attention with Performers", ICLR 2021) approximates
softmax attention ``softmax(q kᵀ/√d) v`` by positive orthogonal random features
``φ(x) = m^-½ exp(ωᵢᵀx' − ‖x'‖²/2)`` with ``x' = d^-¼ x`` and ``m`` rows ``ωᵢ`` drawn as blocks of
orthogonal vectors with chi-distributed norms, so attention costs O(N·m·d) instead of O(N²·d):
``out = φ(q) (φ(k)ᵀ v) / (φ(q) φ(k)ᵀ 1)``. For numerical range each feature map subtracts a max
before ``exp`` (per query row; over all keys of a head for keys), as the paper's reference code does;
the max cancels in the normalised ratio up to the small ``eps`` added to every feature.

As in the authors' baseline (``performer_pytorch.SelfAttention``, head dim 8, default
``m = ⌊d·ln d⌋`` features, no bias on q/k/v): note that their config passes a ReLU ``kernel_fn``,
which that class ignores unless ``generalized_attention`` is set, so the softmax kernel above is what
ran. **Random features: drawn once per layer from its seed when the network is built and never
redrawn** (the attention class the authors used draws them once at construction too; only the
package's full ``Performer`` model redraws them during training). They are stored in the model
file (buffer ``attn.features``), so an exported model computes exactly what was trained.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from LesionFactorizerLib.nn.factorizer import MLP, position_at, position_embedding
from LesionFactorizerLib.nn.unet import UShapedNet, layer_names


def orthogonal_features(count: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``count × dim`` random features: stacked blocks of orthogonal rows (QR of Gaussian
    matrices), each row scaled to the norm of a Gaussian vector (FAVOR+'s orthogonal features)."""
    blocks = []
    for _ in range(-(-count // dim)):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        blocks.append(q.T)
    rows = torch.cat(blocks)[:count]
    norms = torch.randn(count, dim, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (rows * norms).float()


def softmax_features(x: torch.Tensor, features: torch.Tensor, is_query: bool, eps: float = 1e-4) -> torch.Tensor:
    """Positive random features of ``x (…, N, d)`` for the softmax kernel: ``(…, N, m)``."""
    d, m = x.shape[-1], features.shape[0]
    x = x * d ** -0.25
    proj = x @ features.T
    half_norm = x.pow(2).sum(-1, keepdim=True) / 2
    if is_query:
        shift = proj.amax(dim=-1, keepdim=True)
    else:
        shift = proj.amax(dim=(-2, -1), keepdim=True)
    return m ** -0.5 * (torch.exp(proj - half_norm - shift.detach()) + eps)


class FavorAttention(nn.Module):
    """Multi-head FAVOR+ self-attention over every position of a channels-last map."""

    def __init__(self, channels: int, head_dim: int, features: int | None, dropout: float, seed: int):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"{channels} channels do not split into heads of {head_dim}")
        self.heads, self.head_dim = channels // head_dim, head_dim
        count = features or int(head_dim * math.log(head_dim))
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(dropout)
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("features", orthogonal_features(count, head_dim, gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, *grid, c = x.shape
        tokens = x.reshape(b, -1, c)

        def split(t):   # (B, N, C) → (B, heads, N, d)
            return t.view(b, -1, self.heads, self.head_dim).transpose(1, 2)

        q = softmax_features(split(self.to_q(tokens)), self.features, is_query=True)
        k = softmax_features(split(self.to_k(tokens)), self.features, is_query=False)
        v = split(self.to_v(tokens))
        context = k.transpose(-1, -2) @ v                             # (B, h, m, d)
        norm = q @ k.sum(-2, keepdim=True).transpose(-1, -2)          # (B, h, N, 1)
        out = (q @ context) / norm
        out = out.transpose(1, 2).reshape(b, *grid, c)
        return self.dropout(self.to_out(out))


class PerformerBlock(nn.Module):
    """A Factorizer block (adapter, bridge position embedding, two pre-norm residual sub-blocks)
    with FAVOR+ attention as its first sub-block."""

    def __init__(self, cin: int, cout: int, *, head_dim: int, features: int | None, mlp_ratio: float,
                 dropout: float, seed: int, pos_embed_size: int | None = None):
        super().__init__()
        self.adapter = nn.Linear(cin, cout, bias=False) if cin != cout else None
        self.pos_embed = position_embedding(cout, pos_embed_size) if pos_embed_size else None
        self.dropout = nn.Dropout(dropout)
        self.attn_norm = nn.LayerNorm(cout)
        self.attn = FavorAttention(cout, head_dim, features, dropout, seed)
        self.mlp_norm = nn.LayerNorm(cout)
        self.mlp = MLP(cout, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 4, 1)
        if self.adapter is not None:
            x = self.dropout(self.adapter(x))
        if self.pos_embed is not None:
            x = self.dropout(x + position_at(self.pos_embed, tuple(x.shape[1:4])))
        x = x + self.attn(self.attn_norm(x))
        x = x + self.mlp(self.mlp_norm(x))
        return x.permute(0, 4, 1, 2, 3)


class Performer(UShapedNet):
    """The Performer baseline: the Factorizer skeleton with :class:`PerformerBlock` blocks
    (each layer's random features seeded by ``seed`` + its index, like the NMF layers)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        head_dim: int = 8,
        features: int | None = None,
        mlp_ratio: float = 2.0,
        pos_embed_size: int | None = 8,
        dropout: float = 0.1,
        deep_supervision: int = 3,
        seed: int = 0,
    ):
        names = layer_names(len(widths))

        def make_block(cin, cout, level, role):
            index = next(i for i, (_, lv, r) in enumerate(names) if lv == level and r == role)
            return PerformerBlock(cin, cout, head_dim=head_dim, features=features, mlp_ratio=mlp_ratio,
                                  dropout=dropout, seed=seed + index,
                                  pos_embed_size=pos_embed_size if role == "bridge" else None)

        super().__init__(in_channels, out_channels, widths, make_block, deep_supervision)
