"""Integer label maps → network target channels, by the task's post-processing mode.

The channel layout must be the inverse of how the inference pipeline turns outputs into labels
(``LesionFactorizerLib.tasks.PostProcessing``):

* ``hierarchical`` — one sigmoid channel per region in ``task.output_channels`` order (tumor:
  ET, TC, WT), each the union of its labels;
* ``threshold`` — one sigmoid channel, label > 0;
* ``argmax`` — softmax over background + every task label (one-hot).
"""

from __future__ import annotations

import torch

from LesionFactorizerLib.tasks import Task


def channel_labels(task: Task, mode: str | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(channel name, label values) per output channel."""
    mode = mode or task.postprocessing.mode
    if mode == "hierarchical":
        regions = {r.name: tuple(r.labels) for r in task.regions}
        return [(name, regions[name]) for name in task.output_channels]
    if mode == "threshold":
        return [(task.output_channels[0] if task.output_channels else "lesion",
                 tuple(label.value for label in task.labels))]
    if mode == "argmax":
        return [("background", (0,))] + [(label.name, (label.value,)) for label in task.labels]
    raise ValueError(f"unknown post-processing mode {mode!r}")


def encode(label: torch.Tensor, channels: list[tuple[str, tuple[int, ...]]]) -> torch.Tensor:
    """(B, 1, …) integer labels → (B, C, …) float targets."""
    lab = label.long()
    out = [torch.isin(lab, torch.tensor(values, device=lab.device)) for _, values in channels]
    return torch.cat(out, dim=1).float()


def decode_regions(logits: torch.Tensor, channels: list[tuple[str, tuple[int, ...]]], mode: str,
                   regions: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Binary masks per evaluation region from (B, C, …) logits, used for validation Dice.

    Sigmoid outputs are thresholded at 0.5 (logit 0) and, for nested outputs, made consistent
    (ET ⊂ TC ⊂ WT) the way the hierarchical post-processing does; softmax outputs are arg-maxed
    and mapped back to label values."""
    if mode == "argmax":
        values = torch.tensor([v[0] for _, v in channels], device=logits.device)
        lab = values[logits.argmax(1)]
        return {name: torch.isin(lab, torch.tensor(vals, device=lab.device)) for name, vals in regions.items()}
    masks = {name: logits[:, i] > 0 for i, (name, _) in enumerate(channels)}
    if mode == "hierarchical":
        # outermost region first: a region is only kept inside the next larger one
        order = sorted(masks, key=lambda n: -len(dict(channels)[n]))
        for outer, inner in zip(order, order[1:]):
            masks[inner] = masks[inner] & masks[outer]
        return {name: masks[name] for name in regions if name in masks}
    (only,) = masks.values()
    return {name: only for name in regions}
