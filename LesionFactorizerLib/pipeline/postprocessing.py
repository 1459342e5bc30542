"""Network outputs → task labels, small-lesion removal and the per-lesion table."""

from __future__ import annotations

import numpy as np

from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.evaluation.lesions import Lesions, find_lesions
from LesionFactorizerLib.pipeline.geometry import Geometry, lps_to_ras
from LesionFactorizerLib.tasks import POSTPROCESSING_MODES, Task


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Sigmoid per channel or softmax over channels, in place where possible (memory)."""
    from scipy.special import expit

    if activation == "sigmoid":
        return expit(logits, out=logits)
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


def resolve_mode(mode: str | None, activation: str, task: Task) -> str:
    """The label rule actually applied: softmax outputs are always argmax; sigmoid outputs use
    the model's post-processing mode, else the task's."""
    mode = mode or task.postprocessing.mode
    if mode not in POSTPROCESSING_MODES:
        raise UserError(f"unknown post-processing mode {mode!r}; use one of: {', '.join(POSTPROCESSING_MODES)}")
    if activation == "softmax":
        return "argmax"
    if mode == "argmax":
        raise UserError("post-processing mode 'argmax' needs softmax outputs, but the model's outputs are sigmoid; "
                        "fix the model's metadata (postprocessing.mode) or re-export it")
    if mode == "hierarchical" and not task.regions:
        raise UserError(f"post-processing mode 'hierarchical' needs nested regions, which task {task.name!r} "
                        "does not have; use 'threshold'")
    return mode


def to_labels(probs: np.ndarray, task: Task, channels: list[str], activation: str, threshold: float,
              mode: str | None = None) -> np.ndarray:
    """Label map (uint8) from probabilities on the reference grid; ``mode`` as :func:`resolve_mode`."""
    mode = resolve_mode(mode, activation, task)
    labels = np.zeros(probs.shape[1:], dtype=np.uint8)
    by_name = {lb.name: lb.value for lb in task.labels}
    if mode == "argmax":
        index = probs.argmax(axis=0)
        lut = np.zeros(len(channels), dtype=np.uint8)
        for c, name in enumerate(channels):
            if name != "background":
                if name not in by_name:
                    raise UserError(f"model output channel {name!r} is not a label of task {task.name!r}")
                lut[c] = by_name[name]
        return lut[index]
    if mode == "hierarchical":
        # Nested regions, outermost first (WT ⊃ TC ⊃ ET): each region is only kept inside the
        # previous one, and each shell gets the label that is not in the next region.
        regions = sorted(task.regions, key=lambda r: -len(r.labels))
        missing = [r.name for r in regions if r.name not in channels]
        if missing:
            raise UserError(f"model for task {task.name!r} lacks output channel(s) {missing}")
        inside = np.ones(labels.shape, dtype=bool)
        for i, region in enumerate(regions):
            mask = probs[channels.index(region.name)] > threshold
            mask &= inside
            inner = set(regions[i + 1].labels) if i + 1 < len(regions) else set()
            value = sorted(set(region.labels) - inner)[0]
            labels[mask] = value
            inside = mask
        return labels
    for c, name in enumerate(channels):
        value = by_name.get(name, task.labels[0].value if len(channels) == 1 else None)
        if value is None:
            raise UserError(f"model output channel {name!r} is not a label of task {task.name!r}")
        labels[probs[c] > threshold] = value
    return labels


def remove_small_lesions(labels: np.ndarray, geometry: Geometry, min_mm3: float, connectivity: int) -> Lesions:
    """Zero connected lesions smaller than ``min_mm3`` in place; returns the lesions that remain
    (``removed``: how many were dropped), labelled as the evaluation labels them."""
    found = find_lesions(labels > 0, geometry.spacing, connectivity, max(0.0, min_mm3))
    if found.removed:
        labels[found.labels == 0] = 0
    return found


def label_volumes(labels: np.ndarray, geometry: Geometry, task: Task) -> dict:
    counts = np.bincount(labels.ravel(), minlength=256)
    ml = geometry.voxel_volume_ml()
    out = {lb.name: {"value": lb.value, "title": lb.title, "voxels": int(counts[lb.value]),
                     "volume_ml": float(counts[lb.value] * ml)} for lb in task.labels}
    regions = {r.name: {"title": r.title, "labels": list(r.labels),
                        "volume_ml": float(sum(counts[v] for v in r.labels) * ml)} for r in task.regions}
    return {"labels": out, "regions": regions}


def lesion_table(labels: np.ndarray, geometry: Geometry, task: Task, lesions: Lesions) -> list[dict]:
    """One row per lesion of ``lesions`` (from :func:`remove_small_lesions`), largest first:
    volume (mL), centroid in LPS and RAS (mm), per-label volumes."""
    from scipy import ndimage

    comp = lesions.labels
    rows = []
    ml = geometry.voxel_volume_ml()
    for idx, box in enumerate(ndimage.find_objects(comp), start=1):
        if box is None:
            continue
        sub = comp[box] == idx
        k, j, i = np.nonzero(sub)
        offset = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
        centroid_index = offset + np.array([i.mean(), j.mean(), k.mean()])
        centroid = geometry.index_to_physical(centroid_index)
        voxels = int(sub.sum())
        row = {"id": idx, "voxels": voxels, "volume_ml": voxels * ml,
               "centroid_lps": [float(c) for c in centroid], "centroid_ras": lps_to_ras(centroid),
               "centroid_index": [float(c) for c in centroid_index],
               "bbox_index": [[int(offset[a]) for a in range(3)],
                              [int(box[2].stop), int(box[1].stop), int(box[0].stop)]]}
        if len(task.labels) > 1:
            values = labels[box][sub]
            counts = np.bincount(values, minlength=256)
            row["label_volume_ml"] = {lb.name: float(counts[lb.value] * ml) for lb in task.labels}
        rows.append(row)
    return rows   # ids are the lesion labels, which number lesions by decreasing size
