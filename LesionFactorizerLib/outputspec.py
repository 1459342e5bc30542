"""The output spec: how label maps and network output channels correspond, both ways.

In the role of nnU-Net's ``LabelManager``: training encodes label maps into target channels with
:attr:`OutputSpec.channel_values`, export writes :meth:`OutputSpec.as_outputs` into the model file,
and inference decodes probabilities into labels with :meth:`OutputSpec.to_labels`. The label rules
(task ``PostProcessing.mode``) are:

* ``hierarchical`` — one sigmoid channel per nested region (tumor: ET ⊂ TC ⊂ WT), each the union
  of its labels; decoding keeps a region only inside the next larger one and gives each shell the
  label that is not in the next smaller region;
* ``threshold`` — sigmoid channels, one per label (or one for all labels when there is one);
* ``argmax`` — softmax over background + every task label.

Softmax outputs are always decoded by argmax. The rule is resolved once per run (:meth:`resolve`).
Pure Python + numpy-or-torch array operators, so it runs on either kind of array and in the Slicer
GUI process.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.tasks import POSTPROCESSING_KEYS, POSTPROCESSING_MODES, Task

BACKGROUND = "background"


def nest(masks: Dict[str, Any], outermost_first: Sequence[str]) -> Dict[str, Any]:
    """Nested regions made consistent: each mask is kept only inside the previous (larger) one."""
    for outer, inner in zip(outermost_first, outermost_first[1:]):
        masks[inner] = masks[inner] & masks[outer]
    return masks


def nesting_order(channel_values: Sequence[Tuple[str, Tuple[int, ...]]]) -> list:
    """Channel names outermost first: a region holding more labels contains one holding fewer."""
    return [name for name, values in sorted(channel_values, key=lambda cv: -len(cv[1]))]


@dataclass(frozen=True)
class OutputSpec:
    task: Task
    activation: str                     # sigmoid | softmax
    channels: Tuple[str, ...]
    mode: str                           # the rule applied: hierarchical | threshold | argmax
    threshold: float
    min_lesion_mm3: float
    connectivity: int

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def resolve(cls, task: Task, activation: str, channels: Sequence[str],
                overrides: Optional[Mapping[str, Any]] = None) -> "OutputSpec":
        """The spec of a model's outputs; ``overrides``: post-processing values (model file, then
        command line) replacing the task's defaults. Raises :class:`UserError` for outputs the rule
        cannot decode."""
        post = {key: getattr(task.postprocessing, key) for key in POSTPROCESSING_KEYS}
        post.update({k: v for k, v in (overrides or {}).items() if v is not None})
        mode = post.pop("mode")
        if mode not in POSTPROCESSING_MODES:
            raise UserError(f"unknown post-processing mode {mode!r}; use one of: {', '.join(POSTPROCESSING_MODES)}")
        if activation == "softmax":
            mode = "argmax"
        elif mode == "argmax":
            raise UserError("post-processing mode 'argmax' needs softmax outputs, but the model's outputs are "
                            "sigmoid; fix the model's metadata (postprocessing.mode) or re-export it")
        elif mode == "hierarchical" and not task.regions:
            raise UserError(f"post-processing mode 'hierarchical' needs nested regions, which task {task.name!r} "
                            "does not have; use 'threshold'")
        spec = cls(task, activation, tuple(channels), mode, **post)
        spec.channel_values   # every channel must stand for labels of the task
        return spec

    @classmethod
    def for_task(cls, task: Task, mode: Optional[str] = None) -> "OutputSpec":
        """The default outputs of a new model of ``task`` trained with label rule ``mode``."""
        mode = mode or task.postprocessing.mode
        if mode == "argmax":
            return cls.resolve(task, "softmax", [BACKGROUND] + [lb.name for lb in task.labels])
        if mode not in POSTPROCESSING_MODES:
            raise UserError(f"unknown post-processing mode {mode!r}; use one of: {', '.join(POSTPROCESSING_MODES)}")
        channels = task.output_channels[:1] if mode == "threshold" else task.output_channels
        return cls.resolve(task, "sigmoid", channels or ("lesion",), {"mode": mode})

    @classmethod
    def for_network(cls, task: Task, out_channels: int) -> "OutputSpec":
        """The outputs a network with ``out_channels`` channels is taken to have: background + one
        per label means softmax, else the task's own rule."""
        softmax = task.postprocessing.mode == "argmax" or out_channels == len(task.labels) + 1 and out_channels > 1
        return cls.for_task(task, "argmax" if softmax else None)

    def with_overrides(self, threshold: Optional[float] = None, min_lesion_mm3: Optional[float] = None) -> "OutputSpec":
        """A copy with the command line's post-processing values (None: keep)."""
        given = {k: v for k, v in (("threshold", threshold), ("min_lesion_mm3", min_lesion_mm3)) if v is not None}
        return replace(self, **given)

    # -- the tables ------------------------------------------------------------------------------
    @property
    def channel_values(self) -> list:
        """(channel name, label values it stands for) per output channel: the training targets."""
        by_name = {lb.name: lb.value for lb in self.task.labels}
        if self.mode == "hierarchical":
            regions = {r.name: tuple(r.labels) for r in self.task.regions}
            missing = [r for r in regions if r not in self.channels]
            if missing:
                raise UserError(f"model for task {self.task.name!r} lacks output channel(s) {missing}")
            unknown = [c for c in self.channels if c not in regions]
            if unknown:
                raise UserError(f"model output channel(s) {unknown} are not regions of task {self.task.name!r}")
            return [(name, regions[name]) for name in self.channels]
        if self.mode == "threshold" and len(self.channels) == 1:
            return [(self.channels[0], tuple(lb.value for lb in self.task.labels))]
        table = []
        for name in self.channels:
            if name == BACKGROUND and self.mode == "argmax":
                table.append((name, (0,)))
            elif name in by_name:
                table.append((name, (by_name[name],)))
            else:
                raise UserError(f"model output channel {name!r} is not a label of task {self.task.name!r}")
        return table

    @property
    def label_values(self) -> list:
        """The label value each channel decodes to (argmax / threshold rules)."""
        if self.mode == "threshold" and len(self.channels) == 1:
            by_name = {lb.name: lb.value for lb in self.task.labels}
            return [by_name.get(self.channels[0], self.task.labels[0].value)]
        return [values[0] for _, values in self.channel_values]

    @property
    def probability_channels(self) -> list:
        """Channels worth writing as probability maps (all but a softmax background)."""
        return [c for c in self.channels if c != BACKGROUND]

    @property
    def outside_fill(self) -> list:
        """Each channel's probability outside the cropped box: certain background, nothing else."""
        return [1.0 if (self.activation == "softmax" and c == BACKGROUND) else 0.0 for c in self.channels]

    def as_outputs(self) -> dict:
        """The model file's ``outputs`` entry."""
        return {"activation": self.activation, "channels": list(self.channels)}

    def settings(self) -> dict:
        """The post-processing actually applied, as the report records it."""
        return {"mode": self.mode, "threshold": self.threshold, "min_lesion_mm3": self.min_lesion_mm3,
                "connectivity": self.connectivity}

    # -- decoding --------------------------------------------------------------------------------
    def region_masks(self, scores: Any, cut: float) -> Dict[str, Any]:
        """Sigmoid rules: a mask per channel (``scores`` channel-first, numpy or torch), nested for
        the hierarchical rule. ``cut``: the threshold in the units of ``scores``."""
        masks = {name: scores[c] > cut for c, name in enumerate(self.channels)}
        if self.mode == "hierarchical":
            nest(masks, nesting_order(self.channel_values))
        return masks

    def to_labels(self, probs):
        """Label map (uint8) from probabilities ``(C, k, j, i)`` (numpy)."""
        import numpy as np

        if self.mode == "argmax":
            return np.asarray(self.label_values, dtype=np.uint8)[probs.argmax(axis=0)]
        labels = np.zeros(probs.shape[1:], dtype=np.uint8)
        masks = self.region_masks(probs, float(self.threshold))
        if self.mode == "hierarchical":
            # outermost first, each shell gets the label that is not in the next smaller region
            order = nesting_order(self.channel_values)
            values = dict(self.channel_values)
            for outer, inner in zip(order, order[1:] + [None]):
                labels[masks[outer]] = sorted(set(values[outer]) - set(values.get(inner, ())))[0]
            return labels
        for (name, mask), value in zip(masks.items(), self.label_values):
            labels[mask] = value
        return labels
