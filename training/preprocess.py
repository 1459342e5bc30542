"""Case files → normalised arrays, the deterministic part of the training data path.

Training sees its inputs exactly as inference does (docs/ARCHITECTURE.md, steps 3–5), because it runs the inference
pipeline's own stages: the inference image reader, every input aligned onto the task's
reference input (``Task.reference``: the follow-up FLAIR for ms-new) in physical space, and
:func:`LesionFactorizerLib.pipeline.preprocessing.prepare` — foreground box, edge-aligned
resampling to the model spacing (``Geometry.with_spacing``), channel-wise z-score over non-zero
voxels. The label goes onto the same box with one nearest-neighbour resampling.

Arrays are channel-first in SimpleITK's (z, y, x) order; spacings in configs are (x, y, z) mm.
"""

from __future__ import annotations

import logging

import numpy as np

from LesionFactorizerLib.datasets import Case, convert_labels, read_image_ref
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.pipeline.geometry import Geometry
from LesionFactorizerLib.pipeline.io import InputImage, align_to_reference, check_values, read_image
from LesionFactorizerLib.pipeline.preprocessing import foreground_box as pipeline_box
from LesionFactorizerLib.pipeline.preprocessing import prepare
from LesionFactorizerLib.pipeline.preprocessing import zscore_nonzero as pipeline_zscore
from LesionFactorizerLib.core.tasks import get_task

log = logging.getLogger(__name__)

# Part of the disk-cache key: bump when the arrays this module produces change for the same files.
VERSION = 2


def foreground_box(image: np.ndarray) -> tuple[slice, ...]:
    """(z, y, x) slices of the box of voxels non-zero in any channel of a (C, z, y, x) array —
    the inference pipeline's box, so training and inference crop alike."""
    start, stop = pipeline_box(list(image))      # (i, j, k) order
    return tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1]))


def zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """Channel-wise z-score over non-zero voxels with the inference pipeline's own function."""
    out = np.array(image, dtype=np.float32, copy=True)
    for c in range(out.shape[0]):
        pipeline_zscore(out[c])
    return out


def reference_input(task: str, input_names: list[str]) -> str:
    """The input whose grid the others are put on: the task's reference, as at inference."""
    ref = get_task(task).reference
    return ref if ref in input_names else input_names[0]


def load_case(case: Case, input_names: list[str], spacing=None, with_label: bool = True, *, task: str) -> dict:
    """{"image": float32 (C, z, y, x), "label": uint8 (1, z, y, x) | None, "id", "spacing"}; ``task``
    names the reference input."""
    import SimpleITK as sitk

    missing = [n for n in input_names if n not in case.images]
    if missing:
        raise UserError(f"case {case.id} lacks input(s) {missing}")
    inputs = []
    for n in input_names:
        ref = case.images[n]
        image = read_image_ref(ref, n)
        check_values(image, n, ref.path)
        inputs.append(InputImage(n, ref.path, image, Geometry.from_image(image)))
    reference = inputs[input_names.index(reference_input(task, input_names))]
    notes: list[str] = []
    align_to_reference(inputs, reference, notes)
    for note in notes:
        log.info("case %s: %s", case.id, note)
    # align=1: no padding; training crops random patches from the box itself
    prep = prepare([i.image for i in inputs], reference.geometry, list(spacing) if spacing is not None else None, 1)
    image = prep.array
    label = None
    if with_label and case.label:
        lab = read_image(case.label, "label")[0]
        crop = prep.crop_geometry
        if prep.identity and Geometry.from_image(lab).same_grid(reference.geometry):
            (i0, j0, k0), (si, sj, sk) = prep.crop_start, prep.crop_size
            raw = sitk.GetArrayViewFromImage(lab)[k0:k0 + sk, j0:j0 + sj, i0:i0 + si]
        else:   # one nearest-neighbour step from the label's own grid onto the box
            raw = sitk.GetArrayFromImage(sitk.Resample(lab, list(crop.size), sitk.Transform(),
                                                       sitk.sitkNearestNeighbor, crop.origin, crop.spacing,
                                                       crop.direction, 0.0, sitk.sitkFloat32))
        label = convert_labels(raw, case.label_map, case.label)[None]
    return {"id": case.id, "image": np.ascontiguousarray(image),
            "label": None if label is None else np.ascontiguousarray(label),
            "spacing": tuple(prep.crop_geometry.spacing)}

