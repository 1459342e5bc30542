"""After the network: activation, small-lesion removal, label volumes and the per-lesion table.

Probabilities become labels by the run's :class:`~LesionFactorizerLib.core.outputspec.OutputSpec`."""

from __future__ import annotations

import numpy as np

from LesionFactorizerLib.pipeline.lesions import Lesions, find_lesions
from LesionFactorizerLib.pipeline.geometry import Geometry, lps_to_ras
from LesionFactorizerLib.core.tasks import Task


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Sigmoid per channel or softmax over channels, in place where possible (memory)."""
    from scipy.special import expit

    if activation == "sigmoid":
        return expit(logits, out=logits)
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


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


MIDLINE_MM = 5.0   # a lesion whose centroid is this close to the brain's mid-plane is "midline"


def side_of(centroid_lps, center_lps) -> str:
    """left / right / midline of a point relative to the brain centre (LPS: +x is patient left).
    Cheap and approximate: the centre is the middle of the head's bounding box, not a fitted
    mid-sagittal plane."""
    dx = float(centroid_lps[0]) - float(center_lps[0])
    if abs(dx) <= MIDLINE_MM:
        return "midline"
    return "left" if dx > 0 else "right"


def lesion_table(labels: np.ndarray, geometry: Geometry, task: Task, lesions: Lesions,
                 confidence=None, center_lps=None) -> list[dict]:
    """One row per lesion of ``lesions`` (from :func:`remove_small_lesions`), largest first:
    volume (mL), centroid in LPS and RAS (mm), one voxel inside it (``seed_index``, so a viewer
    can pick the lesion out of the label map), per-label volumes; with ``confidence``
    (:class:`~LesionFactorizerLib.pipeline.confidence.ConfidenceMaps`) its confidence measures,
    with ``center_lps`` (brain centre) its side."""
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
        seed = [int(box[2].start + i[0]), int(box[1].start + j[0]), int(box[0].start + k[0])]
        row = {"id": idx, "voxels": voxels, "volume_ml": voxels * ml,
               "centroid_lps": [float(c) for c in centroid], "centroid_ras": lps_to_ras(centroid),
               "centroid_index": [float(c) for c in centroid_index],
               "bbox_index": [[int(offset[a]) for a in range(3)],
                              [int(box[2].stop), int(box[1].stop), int(box[0].stop)]],
               "seed_index": seed}
        if center_lps is not None:
            row["side"] = side_of(centroid, center_lps)
        if confidence is not None:
            row.update(confidence.lesion(box, sub))
        if len(task.labels) > 1:
            values = labels[box][sub]
            counts = np.bincount(values, minlength=256)
            row["label_volume_ml"] = {lb.name: float(counts[lb.value] * ml) for lb in task.labels}
        rows.append(row)
    return rows   # ids are the lesion labels, which number lesions by decreasing size
