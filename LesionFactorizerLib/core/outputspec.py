"""The output spec: how label maps and network output channels correspond, both ways.

In the role of nnU-Net's ``LabelManager``: training encodes label maps into target channels with
:attr:`OutputSpec.channel_values`, export writes :meth:`OutputSpec.as_outputs` into the model file,
and inference decodes probabilities into labels with :meth:`OutputSpec.to_labels`. The label rules
(task ``PostProcessing.mode``) are:

* ``hierarchical`` — the thesis's scheme (8.3.6) for nested regions (tumor: ET ⊂ TC ⊂ WT): the
  outermost region is thresholded, each smaller one is thresholded only inside the one around it,
  and each shell gets the label that is not in the next smaller region. A region's probability is
  its sigmoid channel, or for softmax outputs the sum of its labels' probabilities. Each region
  may have its own threshold (``thresholds``; the others use ``threshold``);
* ``threshold`` — sigmoid channels, one per label (or one for all labels when there is one);
* ``argmax`` — the label of highest probability per voxel: softmax over background + every task
  label, or for sigmoid region channels the probabilities of the shells between them
  (ET, TC − ET, WT − TC, 1 − WT for tumor) — the "select the most probable label" baseline that
  the thesis compares the hierarchical scheme against.

Softmax outputs of a task without nested regions are always decoded by argmax. The rule is
resolved once per run (:meth:`resolve`).
Pure Python + numpy-or-torch array operators, so it runs on either kind of array and in the Slicer
GUI process.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.tasks import POSTPROCESSING_KEYS, POSTPROCESSING_MODES, Task

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
    thresholds: Optional[Mapping[str, float]] = None   # hierarchical: per-region threshold (else ``threshold``)

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
        if mode == "hierarchical" and not task.regions:
            if activation != "softmax":
                raise UserError(f"post-processing mode 'hierarchical' needs nested regions, which task "
                                f"{task.name!r} does not have; use 'threshold'")
            mode = "argmax"
        if activation == "softmax" and mode != "hierarchical":
            mode = "argmax"
        regions = {r.name for r in task.regions}
        if mode == "argmax" and activation == "sigmoid" and set(channels) != regions:
            raise UserError("post-processing mode 'argmax' needs softmax outputs or one sigmoid channel per nested "
                            f"region ({', '.join(sorted(regions)) or 'none for this task'}), but the model's "
                            f"outputs are sigmoid {', '.join(channels)}; use 'threshold'")
        unknown = sorted(set(post.get("thresholds") or {}) - regions)
        if unknown:
            raise UserError(f"per-region thresholds for {', '.join(unknown)}: task {task.name!r} has regions "
                            f"{', '.join(sorted(regions)) or '(none)'}")
        spec = cls(task, activation, tuple(channels), mode, **post)
        spec.channel_values   # every channel must stand for labels of the task
        return spec

    @classmethod
    def for_task(cls, task: Task, mode: Optional[str] = None) -> "OutputSpec":
        """The default outputs of a new model of ``task`` trained with label rule ``mode``."""
        mode = mode or task.postprocessing.mode
        if mode == "argmax":
            return cls.resolve(task, "softmax", [BACKGROUND] + [lb.name for lb in task.labels], {"mode": mode})
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

    def with_overrides(self, threshold: Optional[float] = None, min_lesion_mm3: Optional[float] = None,
                       mode: Optional[str] = None) -> "OutputSpec":
        """A copy with the command line's post-processing values (None: keep). A threshold given on
        the command line replaces the model's per-region ones too; ``mode`` (hierarchical | argmax)
        is checked as :meth:`resolve` checks a model's."""
        spec = self
        if mode is not None and mode != self.mode:
            post = {**self.settings(), "mode": mode}
            spec = OutputSpec.resolve(self.task, self.activation, self.channels, post)
            if spec.mode != mode:
                raise UserError(f"--postprocess {mode}: task {self.task.name!r} has no nested regions; its outputs "
                                f"are decoded by {spec.mode!r}")
        given = {k: v for k, v in (("threshold", threshold), ("min_lesion_mm3", min_lesion_mm3)) if v is not None}
        if threshold is not None:
            given["thresholds"] = None
        return replace(spec, **given)

    # -- the tables ------------------------------------------------------------------------------
    @property
    def channel_values(self) -> list:
        """(channel name, label values it stands for) per output channel: the training targets."""
        by_name = {lb.name: lb.value for lb in self.task.labels}
        if self.activation == "sigmoid" and self.mode in ("hierarchical", "argmax"):
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
            if name == BACKGROUND and self.activation == "softmax":
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
        out = {"mode": self.mode, "threshold": self.threshold, "min_lesion_mm3": self.min_lesion_mm3,
               "connectivity": self.connectivity}
        if self.thresholds:
            out["thresholds"] = dict(self.thresholds)
        return out

    def threshold_for(self, region: str) -> float:
        return float((self.thresholds or {}).get(region, self.threshold))

    @property
    def regions_outermost_first(self) -> list:
        """(region name, its labels), the largest region first (tumor: WT, TC, ET)."""
        return sorted(((r.name, tuple(r.labels)) for r in self.task.regions), key=lambda r: -len(r[1]))

    # -- decoding --------------------------------------------------------------------------------
    def region_masks(self, scores: Any, cut: float) -> Dict[str, Any]:
        """Sigmoid rules: a mask per channel (``scores`` channel-first, numpy or torch), nested for
        the hierarchical rule. ``cut``: the threshold in the units of ``scores``."""
        masks = {name: scores[c] > cut for c, name in enumerate(self.channels)}
        if self.mode == "hierarchical":
            nest(masks, nesting_order(self.channel_values))
        return masks

    def region_probabilities(self, probs) -> Dict[str, Any]:
        """Probability of each nested region, outermost first: its sigmoid channel, or the sum of
        its labels' softmax probabilities."""
        if self.activation == "sigmoid":
            return {name: probs[self.channels.index(name)] for name, _ in self.regions_outermost_first}
        index = dict(zip(self.label_values, range(len(self.channels))))
        return {name: sum(probs[index[v]] for v in values) for name, values in self.regions_outermost_first}

    def _hierarchical_labels(self, probs):
        """Thesis 8.3.6: the outermost region by its threshold, each smaller one thresholded inside
        the one around it; each shell gets its label not in the next smaller region. Nesting holds
        by construction, whatever the probabilities and thresholds."""
        import numpy as np

        labels = np.zeros(probs.shape[1:], dtype=np.uint8)
        inside = None
        order = self.regions_outermost_first
        region = self.region_probabilities(probs)
        for (name, values), inner in zip(order, order[1:] + [(None, ())]):
            mask = region[name] > self.threshold_for(name)
            inside = mask if inside is None else inside & mask
            labels[inside] = sorted(set(values) - set(inner[1]))[0]
        return labels

    def _shell_probabilities(self, probs):
        """Sigmoid region channels → (probabilities of background and of each shell's label, those
        labels): tumor 1 − WT, WT − TC, TC − ET, ET, each region capped by the one around it."""
        import numpy as np

        order = self.regions_outermost_first
        region = self.region_probabilities(probs)
        capped = [region[order[0][0]]]
        for name, _ in order[1:]:
            capped.append(np.minimum(region[name], capped[-1]))
        shells = [1.0 - capped[0]] + [p - q for p, q in zip(capped, capped[1:])] + [capped[-1]]
        values = [0] + [sorted(set(v) - set(w))[0] for (_, v), (_, w) in zip(order, order[1:])] + [order[-1][1][0]]
        return np.stack(shells), values

    def to_labels(self, probs):
        """Label map (uint8) from probabilities ``(C, k, j, i)`` (numpy)."""
        import numpy as np

        if self.mode == "hierarchical":
            return self._hierarchical_labels(probs)
        if self.mode == "argmax":
            if self.activation == "sigmoid":
                shells, values = self._shell_probabilities(probs)
                return np.asarray(values, dtype=np.uint8)[shells.argmax(axis=0)]
            return np.asarray(self.label_values, dtype=np.uint8)[probs.argmax(axis=0)]
        labels = np.zeros(probs.shape[1:], dtype=np.uint8)
        masks = self.region_masks(probs, float(self.threshold))
        for (name, mask), value in zip(masks.items(), self.label_values):
            labels[mask] = value
        return labels
