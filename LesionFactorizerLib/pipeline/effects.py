"""What each NMF component does to the lesion: the segmentation without it, for every component of
every layer, without segmenting the case again per component.

The overlap ranking (:mod:`.ranking`) says where a component lights up; this says whether the
network's decision depends on it. A component's *effect* is the change in the labels when it is
left out of its layer's NMF reconstruction (``NMF.drop``, as ``counterfactual`` does): voxels
added, removed and relabelled, the lesion's volume change and each label's. The ranking orders a
layer's components by the number of changed voxels (ties: component order).

**Exact by construction.** For each window batch the network runs once up to the layer; the layer
block then runs once per component with that component dropped, on the same window batch as the
full counterfactual (the same code path: memory-saving path and native kernel included), and the
blocks downstream run on all those copies at once — components batched, as windows are (a
sample's result does not depend on the others in its batch). Windows, passes (TTA flips, ensemble
members, in the same order), stitching, and post-processing (:meth:`Segmenter.labels_of`) are the
pipeline's own, so each component's labels are those a ``counterfactual`` run with that component
dropped writes (tested label for label, one pass and mirror TTA; ensemble members
follow the same order, untested). Runs eager PyTorch on the run's device and window batch;
``counterfactual`` runs through ``--backend``, eager unless a faster backend was calibrated.

**Cost.** Per layer with K components: ``⌈K/G⌉`` times the network up to the layer, plus K times
the layer and everything downstream of it, for every window and pass; ``G`` components share a
forward (at most :data:`MAX_CHUNK`, within free memory and :data:`MAX_STITCH_BYTES` of stitched logits).
Post-processing runs once per component. Deep layers have the most components (heads grow with
width) and the least downstream; measured per layer in ``components.json`` (``effects_s``) and by
``benchmarks/bench_component_effects.py``. :func:`component_costs` estimates it from the network
for the progress bar: one component of a layer costs the share of the network's work at and
downstream of the layer (a block's work ∝ width² × voxels at its level) times the inference stage,
plus one postprocess stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Components run together (one chunk): at most MAX_CHUNK, their windows' working set within a
# quarter of free memory (inference's own rule, inference.auto_sw_batch_size), and their stitched
# logits within MAX_STITCH_BYTES. Every chunk runs the network up to the layer once more.
MAX_CHUNK = 16
MAX_STITCH_BYTES = 1 << 30

METHOD = ("effect = voxels whose label changes when the component is left out of its layer's NMF reconstruction "
          "(added + removed + relabelled), computed with the windows, passes and post-processing of `counterfactual`; "
          "delta_ml = change in lesion volume")


@dataclass
class EffectInputs:
    """What one run's effect ranking needs from its segmentation (all from :class:`Segmenter`)."""

    array: np.ndarray            # the network input (C, D, H, W), the prepared box
    roi: tuple[int, int, int]
    interval: tuple[int, int, int]   # the run's window plan: the same windows as its segmentation
    sw_batch_size: int
    labels: np.ndarray           # the segmentation the effects are measured against (reference grid)


def effect_layers(seg, layers: list[str] | None = None) -> list[str]:
    """The layers whose components are ranked: the component model's NMF layers in execution
    order, less short-circuited ones (``--skip-nmf``: no components), only ``layers`` when given."""
    skipped = seg.settings["skip_nmf"] or []
    return [n for n, _ in seg.component_model.component_layers
            if n not in skipped and (layers is None or n in layers)]


def component_costs(model, names: list[str]) -> dict[str, tuple[int, float]]:
    """Per layer of ``names``: (K, share of one forward pass each component re-runs). The share is
    the work of the layer's block and every later block over the work of all blocks; a block's
    work is width² × voxels at its stride (projections and MLP are per-voxel C×C products), the
    width being what its NMF reads. The network up to the layer, run once per chunk, is left out."""
    from LesionFactorizerLib.pipeline.groups import component_count

    nmf = model.nmf_layers()
    order = [n for n, _ in model.component_layers]
    work = {n: nmf[n].in_proj.in_features ** 2 / stride ** 3 for n, stride in model.component_layers}
    total = sum(work.values())
    return {n: (component_count(model, n), sum(work[m] for m in order[order.index(n):]) / total) for n in names}


def component_weight(share: float) -> float:
    """One component's progress weight in the units of :data:`.progress.STAGES`: ``share`` of the
    inference stage (:func:`component_costs`) and a whole postprocess stage."""
    from LesionFactorizerLib.pipeline.progress import STAGES

    weights = dict(STAGES)
    return share * weights["inference"] + weights["postprocess"]


def stage_weight(costs: dict[str, tuple[int, float]]) -> float:
    """The effects stage's progress weight: every component of every ranked layer."""
    return sum(k * component_weight(share) for k, share in costs.values())


def compute_effects(seg, prep, case, inputs: EffectInputs, layers: list[str] | None = None,
                    on_progress: Callable[[float, str], None] | None = None) -> dict[str, dict]:
    """Per NMF layer of ``seg``'s component model (``layers``: only these): ``{"ranking": rows best
    first, "seconds": wall time}``; a row per component: ``component``, ``changed_voxels``,
    ``added``, ``removed``, ``relabelled``, ``changed_ml``, ``delta_ml`` (lesion) and
    ``labels_delta_ml`` (per label). Short-circuited layers (``--skip-nmf``) have no components."""
    import torch

    model = seg.component_model
    names = effect_layers(seg, layers)
    geometry = case.reference.geometry
    baseline = _Baseline(inputs.labels, geometry, seg.task)
    runner = _Passes(seg, inputs)
    # progress by estimated work, not by component count: a deep layer's components are cheap
    costs = component_costs(model, names)
    total = stage_weight(costs) or 1.0
    done, result = 0.0, {}
    with torch.no_grad(), runner:
        for name in names:
            t = time.monotonic()
            count, share = costs[name]
            rows = []
            for chunk in runner.chunks(count):
                for k, logits in runner.dropped_logits(name, chunk):
                    labels, _probs, _found = seg.labels_of(prep, logits, case)
                    rows.append(baseline.compare(k, labels))
                done += len(chunk) * component_weight(share)
                if on_progress:
                    on_progress(done / total, f"effect of each component of {name}")
            result[name] = {"ranking": ranked_by_effect(rows), "seconds": round(time.monotonic() - t, 3)}
    return result


def ranked_by_effect(rows: list[dict]) -> list[dict]:
    """Largest effect first (changed voxels); ties keep the component order."""
    return sorted(rows, key=lambda r: (-r["changed_voxels"], r["component"]))


def best_effect(effects: dict[str, dict]) -> dict | None:
    """``{"layer", "component", "changed_voxels", "changed_ml", "delta_ml"}`` of the component with
    the largest effect over all layers (ties: the later layer, closer to the output, as the overlap
    ranking's best); None when no layer was ranked or no component changes anything."""
    best = None
    for name, entry in effects.items():
        rows = entry.get("ranking") or []
        if rows and (best is None or rows[0]["changed_voxels"] >= best["changed_voxels"]):
            best = {"layer": name, **{k: rows[0][k] for k in ("component", "changed_voxels", "changed_ml", "delta_ml")}}
    return best if best and best["changed_voxels"] > 0 else None


class _Baseline:
    """The segmentation the effects are measured against, and one component's row against it."""

    def __init__(self, labels: np.ndarray, geometry, task):
        from LesionFactorizerLib.pipeline.postprocessing import label_volumes

        self.labels, self.geometry, self.task = labels, geometry, task
        self.volumes = {n: v["volume_ml"] for n, v in label_volumes(labels, geometry, task)["labels"].items()}
        self.ml = geometry.voxel_volume_ml()

    def compare(self, component: int, after: np.ndarray) -> dict:
        from LesionFactorizerLib.pipeline.groups import DIFFERENCE, difference_map
        from LesionFactorizerLib.pipeline.postprocessing import label_volumes

        counts = np.bincount(difference_map(self.labels, after).ravel(), minlength=4)
        changed = int(counts[1:].sum())
        after_volumes = label_volumes(after, self.geometry, self.task)["labels"]
        return {"component": int(component), "changed_voxels": changed,
                **{DIFFERENCE[v]: int(counts[v]) for v in (1, 2, 3)},
                "changed_ml": round(changed * self.ml, 4),
                "delta_ml": round(float(int(counts[1]) - int(counts[2])) * self.ml, 4),
                "labels_delta_ml": {n: round(after_volumes[n]["volume_ml"] - v, 4) for n, v in self.volumes.items()}}


class _Passes:
    """The sliding-window passes of :func:`pipeline.inference.run_inference`, with one layer of the
    component model branched into one copy per dropped component."""

    def __init__(self, seg, inputs: EffectInputs):
        import torch

        from LesionFactorizerLib.pipeline.inference import (TTA_FLIPS, WINDOW_BYTES_PER_VOXEL, free_memory,
                                                            resolve_device)

        self.seg, self.inputs = seg, inputs
        self.models = [m.model for m in seg.loaded]
        self.comp = seg.component_model
        self.flips = TTA_FLIPS if seg.settings["tta"] else ((),)
        self.interval = inputs.interval
        self.device = resolve_device(seg.opts.device)
        self.x = torch.from_numpy(inputs.array).unsqueeze(0)
        self.others: dict[tuple[int, tuple], torch.Tensor] = {}   # passes no component changes, run once
        outputs = len(seg.spec.outputs.channels)
        voxels = int(np.prod(inputs.array.shape[1:]))
        free = free_memory(self.device) or (8 << 30)
        samples = free // 4 // (int(np.prod(inputs.roi)) * inputs.array.shape[0] * WINDOW_BYTES_PER_VOXEL)
        self.per_chunk = max(1, min(MAX_CHUNK, samples // max(1, inputs.sw_batch_size),
                                    MAX_STITCH_BYTES // (4 * outputs * voxels)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for model in self.models:   # back where the pipeline keeps them between runs
            model.to("cpu")

    def chunks(self, count: int) -> list[list[int]]:
        return [list(range(i, min(i + self.per_chunk, count))) for i in range(0, count, self.per_chunk)]

    def dropped_logits(self, layer: str, chunk: list[int]):
        """``(component, mean logits)`` for each component of ``chunk`` dropped from ``layer``:
        the passes summed in :func:`run_inference`'s order, then divided by their number."""
        acc: dict[int, object] = {}
        passes = 0
        for m, model in enumerate(self.models):
            model.to(self.device)
            for flip in self.flips:
                if model is self.comp:
                    outs = self._stitch(model, flip, self._branched(model, layer, chunk))
                    per = {k: outs[str(k)] for k in chunk}
                else:
                    key = (m, flip)
                    if key not in self.others:
                        self.others[key] = self._stitch(model, flip, lambda b, model=model: {"logits": model(b)})[
                            "logits"]
                    per = {k: self.others[key] for k in chunk}
                for k, logits in per.items():
                    logits = logits.flip(flip) if flip else logits
                    acc[k] = logits.clone() if k not in acc else acc[k].add_(logits)
                passes += 1
        for k in chunk:
            yield k, (acc.pop(k) / passes)[0].numpy()

    def _stitch(self, model, flip, predictor):
        from LesionFactorizerLib.pipeline.sliding_window import stitch

        x = self.x.flip(flip) if flip else self.x

        def run(batch):
            return {key: value.float() for key, value in predictor(batch).items()}

        return stitch(x, self.inputs.roi, self.interval, self.inputs.sw_batch_size, run, self.device)

    @staticmethod
    def _branched(model, layer: str, chunk: list[int]):
        """A predictor whose network runs ``layer`` once per component of ``chunk`` (dropped), and
        everything downstream on all copies as one batch (component-major: copy i = windows
        ``i·B … i·B+B−1``)."""
        import torch

        from LesionFactorizerLib.pipeline.groups import selected

        def call(name, h, skip):
            if name == layer:
                outs = []
                for k in chunk:
                    with selected(model, layer, k, "drop"):
                        # clone: a block writes its output into a buffer it reuses on its next call
                        outs.append(model.run_block(name, h, skip).clone())
                return torch.cat(outs)
            if skip is not None and skip.shape[0] < h.shape[0]:   # a skip connection from upstream
                skip = torch.cat([skip] * (h.shape[0] // skip.shape[0]))
            return model.run_block(name, h, skip)

        def predictor(batch):
            logits = model(batch, call=call)
            b = batch.shape[0]
            return {str(k): logits[i * b:(i + 1) * b] for i, k in enumerate(chunk)}

        return predictor
