"""Which NMF components explain the predicted lesion: one score per component, a ranking per layer.

A component explains the lesion when it is active throughout the lesion (*coverage*) and little
elsewhere in the brain (*share* of its activation that lies in the lesion). With the map scaled to
``a = min(A / robust max, 1)`` (robust max: 99th percentile over brain voxels, so one hot voxel does
not squash the rest) and ``L``, ``B`` the fraction of each layer voxel covered by lesion and brain:

- ``coverage = Σ a·L / Σ L``   (1: fully on over the whole lesion)
- ``share    = Σ a·L / Σ a·B`` (1: on nowhere but in the lesion)
- ``score    = 2 Σ a·L / (Σ L + Σ a·B)`` — their harmonic mean, i.e. the soft Dice of the scaled
  map with the lesion; no threshold to choose, in [0, 1], comparable across layers.
- ``contrast = mean(A in lesion) / mean(A in brain)`` — the plain ratio, reported for reading.

Brain = voxels that are non-zero in any input (the foreground rule of preprocessing); lesion = any
non-zero label of the written segmentation. Both are taken to each layer's own grid as *fractions*
(resampled to the model grid, then averaged over each ``s³`` block), so a lesion smaller than a
coarse layer voxel still counts, in proportion. The most informative layer is the one whose best
component scores highest; the overview picture and the Slicer browser open on that component.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from LesionFactorizerLib.pipeline.geometry import Geometry

METHOD = ("score = soft Dice of the component map (scaled to its 99th percentile in brain, clipped to 1) "
          "with the predicted lesion = harmonic mean of coverage (mean scaled activation over the lesion) and "
          "share (fraction of the scaled activation in the brain that lies in the lesion); contrast = mean "
          "activation in the lesion / mean activation in brain tissue")


@dataclass
class Masks:
    """Lesion and brain as fractions of each voxel of the model grid (numpy ``[k, j, i]``)."""

    lesion: np.ndarray
    brain: np.ndarray
    _by_stride: dict = field(default_factory=dict)

    def at_stride(self, stride: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Both masks on a layer grid at ``stride`` (``shape``: that grid's numpy shape)."""
        if stride not in self._by_stride:
            self._by_stride[stride] = (block_mean(self.lesion, stride, shape), block_mean(self.brain, stride, shape))
        return self._by_stride[stride]


def block_mean(array: np.ndarray, stride: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Mean over each ``stride³`` block (zero-padded at the far end) — layer voxel ``n`` covers
    model voxels ``[n·s, (n+1)·s)`` (``Geometry.strided``)."""
    s = int(stride)
    if s == 1:
        return array.astype(np.float32, copy=False)
    padded = np.zeros([n * s for n in shape], dtype=np.float32)
    k, j, i = (min(a, b) for a, b in zip(array.shape, padded.shape))
    padded[:k, :j, :i] = array[:k, :j, :i]
    return padded.reshape(shape[0], s, shape[1], s, shape[2], s).mean(axis=(1, 3, 5))


def model_grid_masks(labels_image, input_images: list, model_grid: Geometry) -> Masks:
    """Lesion (any label) and brain (any input non-zero) resampled onto the model grid (linear)."""
    import SimpleITK as sitk

    reference = labels_image
    lesion = sitk.Cast(labels_image > 0, sitk.sitkFloat32)
    brain_array = np.zeros(sitk.GetArrayViewFromImage(labels_image).shape, dtype=np.float32)
    for image in input_images:
        brain_array[sitk.GetArrayViewFromImage(image) != 0] = 1.0
    brain = sitk.GetImageFromArray(brain_array)
    brain.CopyInformation(reference)
    target = model_grid.to_image(np.zeros(model_grid.shape, dtype=np.float32))

    def on_model_grid(image):
        if Geometry.from_image(image).same_grid(model_grid):
            return sitk.GetArrayFromImage(image)
        return sitk.GetArrayFromImage(sitk.Resample(image, target, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                    sitk.sitkFloat32))

    les, br = on_model_grid(lesion), on_model_grid(brain)
    return Masks(les, np.maximum(br, les))   # a lesion voxel is tissue even where the inputs are zero


def score_components(maps: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> list[dict]:
    """Scores of each map ``(K, k, j, i)`` on a grid where ``lesion``/``brain`` are fractions;
    an empty list when the lesion is empty (nothing to explain)."""
    lesion_sum, brain_sum = float(lesion.sum(dtype=np.float64)), float(brain.sum(dtype=np.float64))
    if lesion_sum <= 0 or brain_sum <= 0:
        return []
    inside = brain > 0
    rows = []
    for index, a in enumerate(maps):
        values = a[inside]
        top = float(np.percentile(values, 99)) if values.size else 0.0
        top = top if top > 0 else float(a.max())
        mean_lesion = float((a * lesion).sum(dtype=np.float64)) / lesion_sum
        mean_brain = float((a * brain).sum(dtype=np.float64)) / brain_sum
        if top <= 0:
            rows.append({"component": index, "score": 0.0, "coverage": 0.0, "share": 0.0, "contrast": 0.0})
            continue
        scaled = np.minimum(a / top, 1.0)
        on_lesion = float((scaled * lesion).sum(dtype=np.float64))
        on_brain = float((scaled * brain).sum(dtype=np.float64))
        rows.append({"component": index,
                     "score": 2.0 * on_lesion / (lesion_sum + on_brain),
                     "coverage": on_lesion / lesion_sum,
                     "share": on_lesion / on_brain if on_brain > 0 else 0.0,
                     "contrast": mean_lesion / mean_brain if mean_brain > 0 else 0.0})
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def ranked(rows: list[dict]) -> list[dict]:
    """Best first; ties keep the component order."""
    return sorted(rows, key=lambda r: (-r["score"], r["component"]))


def best_component(entries: list[dict]) -> dict | None:
    """``{"layer", "component", "score"}`` of the best-scoring component over the layer entries of
    ``components.json`` (ties: the later layer, closer to the output); None when nothing was ranked."""
    best = None
    for entry in entries:
        rows = entry.get("ranking") or []
        if rows and (best is None or rows[0]["score"] >= best["score"]):
            best = {"layer": entry["layer"], "component": rows[0]["component"], "score": rows[0]["score"]}
    return best
