"""Integer label maps ↔ network channels during training, by the task's label rule.

The rule itself (which labels each channel stands for, how nested regions are made consistent)
lives in :class:`LesionFactorizerLib.core.outputspec.OutputSpec`, the same object export writes into
the model file and inference decodes with; this module applies it to torch tensors.
"""

from __future__ import annotations

import torch

from LesionFactorizerLib.core.outputspec import OutputSpec, nest, nesting_order
from LesionFactorizerLib.core.tasks import Task


def channel_labels(task: Task, mode: str | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(channel name, label values) per output channel of a new model trained with rule ``mode``."""
    return OutputSpec.for_task(task, mode).channel_values


def encode(label: torch.Tensor, channels: list[tuple[str, tuple[int, ...]]]) -> torch.Tensor:
    """(B, 1, …) integer labels → (B, C, …) float targets."""
    lab = label.long()
    out = [torch.isin(lab, torch.tensor(values, device=lab.device)) for _, values in channels]
    return torch.cat(out, dim=1).float()


def decode_regions(logits: torch.Tensor, channels: list[tuple[str, tuple[int, ...]]], mode: str,
                   regions: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Binary masks per evaluation region from (B, C, …) logits, used for validation Dice.

    Sigmoid outputs are thresholded at 0.5 (logit 0) and, for nested outputs, made consistent the
    way inference does; softmax outputs are arg-maxed and mapped back to label values."""
    if mode == "argmax":
        values = torch.tensor([v[0] for _, v in channels], device=logits.device)
        lab = values[logits.argmax(1)]
        return {name: torch.isin(lab, torch.tensor(vals, device=lab.device)) for name, vals in regions.items()}
    masks = {name: logits[:, i] > 0 for i, (name, _) in enumerate(channels)}
    if mode == "hierarchical":
        nest(masks, nesting_order(channels))
        return {name: masks[name] for name in regions if name in masks}
    (only,) = masks.values()
    return {name: only for name in regions}
