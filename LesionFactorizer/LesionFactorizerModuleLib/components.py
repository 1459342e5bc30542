"""Reading the worker's NMF component maps for the component browser.

Each Factorizer layer is written at its own resolution with its true physical geometry
(docs/ARCHITECTURE.md, step 8). The worker (``LesionFactorizerLib.pipeline.components.write_components``) writes exactly one
layout: ``components/<layer>.nrrd`` holding a K-component vector image per layer, indexed by
``components/components.json`` (layer, stride, K, file, LPS geometry and each component's maximum).
That is the only layout read here; anything else is an error, not a guess.

The index is read first and costs nothing; a layer's maps are read when the browser first shows
that layer, then kept in memory so that moving the component slider only swaps arrays. Display
windows come from the maxima stored in the index, so no percentile pass over every map is needed.
Geometry is converted from ITK's LPS to Slicer's RAS here, in one place.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from LesionFactorizerLib.pipeline.groups import DIFFERENCE  # torch-free, like the worker's imports
from LesionFactorizerLib.pipeline.effects import best_effect  # torch-free: the library's rules, not copies
from LesionFactorizerLib.pipeline.ranking import best_component as best_scoring
from LesionFactorizerModuleLib.worker import NMF_LAYERS

INDEX_NAME = "components.json"
EFFECT_FIELDS = ("component", "changed_voxels", "added", "removed", "changed_ml", "delta_ml")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def layer_title(layer: str) -> str:
    """'encoder1' -> 'Encoder 1', 'bridge' -> 'Bridge'."""
    match = re.fullmatch(r"([a-z]+)(\d+)", layer)
    return f"{match.group(1).capitalize()} {match.group(2)}" if match else layer.capitalize()


def ijk_to_ras(origin, spacing, direction) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a 3-D ITK geometry (origin/direction in LPS)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d @ np.diag(np.asarray(spacing, dtype=float))
    m[:3, 3] = np.asarray(origin, dtype=float)
    return _LPS_TO_RAS @ m


@dataclass
class ComponentLayer:
    """One layer's component maps; ``maps[k]`` is indexed (k, j, i) like Slicer's arrays.

    ``maps`` is read from ``path`` on first access (lazy), everything else comes from the index.
    """

    name: str
    path: Path
    count: int
    stride: int
    size: tuple[int, int, int]  # (i, j, k) voxels, as ITK reports it
    ijk_to_ras: np.ndarray  # 4x4
    maxima: list[float]
    ranking: list[dict] = field(default_factory=list)  # best first: component, score, coverage, share, contrast
    effects: list[dict] = field(default_factory=list)  # largest first: EFFECT_FIELDS (+ relabelled, labels_delta_ml)
    _maps: np.ndarray | None = field(default=None, repr=False)

    @property
    def title(self) -> str:
        return layer_title(self.name)

    @property
    def loaded(self) -> bool:
        return self._maps is not None

    @property
    def maps(self) -> np.ndarray:
        """(K, slices, rows, columns) float32, read once."""
        if self._maps is None:
            maps, geometry = read_stack(self.path)
            expected = (self.count, *reversed(self.size))
            if maps.shape != expected or not np.allclose(geometry, self.ijk_to_ras, atol=1e-4):
                raise ValueError(f"{self.path.name} does not match {INDEX_NAME} (shape {maps.shape}, "
                                 f"expected {expected}); run the segmentation again.")
            self._maps = np.ascontiguousarray(maps, dtype=np.float32)
        return self._maps

    def rank_of(self, index: int) -> tuple[int, dict] | None:
        """(1-based rank, scores) of component ``index``; None when the layer was not ranked."""
        for rank, row in enumerate(self.ranking, start=1):
            if row.get("component") == index:
                return rank, row
        return None

    def effect_of(self, index: int) -> tuple[int, dict] | None:
        """(1-based rank by effect, row) of component ``index``; None without an effect ranking."""
        for rank, row in enumerate(self.effects, start=1):
            if row.get("component") == index:
                return rank, row
        return None

    def window(self, index: int) -> tuple[float, float]:
        """Display range of component ``index``: 0 (maps are non-negative) to its stored maximum."""
        high = float(self.maxima[index])
        return (0.0, high if high > 0 else 1.0)


def read_stack(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Maps (K, slices, rows, columns) and the 4x4 IJK-to-RAS matrix of a 3-D scalar or vector image.

    The worker writes component layers and multi-channel probabilities as 3-D vector images and a
    single probability channel as a 3-D scalar image; nothing else is accepted.
    """
    import SimpleITK as sitk

    path = Path(path)
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3:
        raise ValueError(f"{path.name}: expected a 3-D image, not {image.GetDimension()}-D.")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    geometry = ijk_to_ras(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    if image.GetNumberOfComponentsPerPixel() > 1:
        return np.moveaxis(array, -1, 0), geometry
    return array[np.newaxis], geometry


def _field(entry: Any, key: str, where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise ValueError(f"{where}: missing {key!r}; the component maps cannot be shown (run the segmentation "
                         f"again with this version of the library).")
    return entry[key]


def load_components(directory: str | os.PathLike) -> dict[str, ComponentLayer]:
    """The layers listed in ``directory/components.json``, in network order (maps not read yet)."""
    root = Path(directory)
    index_path = root / INDEX_NAME
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{index_path}: cannot read the component index ({exc}).") from exc
    if _field(index, "coordinate_system", INDEX_NAME) != "LPS":
        raise ValueError(f"{index_path}: unsupported coordinate system {index['coordinate_system']!r}.")
    entries = _field(index, "layers", INDEX_NAME)
    if not isinstance(entries, list):
        raise ValueError(f"{index_path}: 'layers' must be a list.")
    layers: dict[str, ComponentLayer] = {}
    for number, entry in enumerate(entries):
        where = f"{INDEX_NAME} layer {number}"
        name = str(_field(entry, "layer", where))
        if name not in NMF_LAYERS or name in layers:
            raise ValueError(f"{where}: unknown or repeated layer {name!r}; expected one of {', '.join(NMF_LAYERS)}.")
        count = int(_field(entry, "components", where))
        maxima = [float(v) for v in _field(entry, "max", where)]
        size = tuple(int(v) for v in _field(entry, "size", where))
        spacing, origin = _field(entry, "spacing", where), _field(entry, "origin", where)
        direction = _field(entry, "direction", where)
        if count < 1 or len(maxima) != count or len(size) != 3 or len(spacing) != 3 or len(origin) != 3 \
                or len(direction) != 9:
            raise ValueError(f"{where}: inconsistent entry (components, max, size or geometry).")
        path = root / str(_field(entry, "file", where))
        if not path.is_file():
            raise ValueError(f"{where}: {path.name} is missing.")
        ranking = entry.get("ranking") or []   # absent: a run without a lesion, or an older library
        effects = entry.get("effect_ranking") or []   # absent: a run without --effects
        for rows in (ranking, effects):
            if not isinstance(rows, list) or any(not isinstance(r, dict) or not 0 <= int(r.get("component", -1)) < count
                                                 for r in rows):
                raise ValueError(f"{where}: inconsistent component ranking.")
        if any(not isinstance(r.get("changed_voxels"), int) or not all(k in r for k in EFFECT_FIELDS) for r in effects):
            raise ValueError(f"{where}: inconsistent effect ranking.")
        layers[name] = ComponentLayer(name=name, path=path, count=count, stride=int(_field(entry, "stride", where)),
                                      size=size, ijk_to_ras=ijk_to_ras(origin, spacing, direction), maxima=maxima,
                                      ranking=[dict(r) for r in ranking], effects=[dict(r) for r in effects])
    return dict(sorted(layers.items(), key=lambda kv: NMF_LAYERS.index(kv[0])))


def best_component(layers: dict[str, ComponentLayer]) -> tuple[str, int] | None:
    """(layer, component) the browser opens on: the component with the largest effect on the lesion
    when the run ranked effects, else the best-scoring one; the library's rules (``best_effect``,
    ``ranking.best_component``), applied to what was read. None when nothing was ranked."""
    top = best_effect({name: {"ranking": layer.effects} for name, layer in layers.items()}) \
        or best_scoring([{"layer": name, "ranking": layer.ranking} for name, layer in layers.items()])
    return (top["layer"], int(top["component"])) if top else None


def score_text(layer: ComponentLayer | None, index: int) -> str:
    """The line beside the slider: how well component ``index`` explains the predicted lesion."""
    found = layer.rank_of(index) if layer is not None else None
    if found is None:
        return "not ranked (no lesion was segmented)" if layer is not None else ""
    rank, row = found
    text = (f"rank {rank} of {layer.count} in {layer.title}: score {row['score']:.2g}, covers "
            f"{100 * row.get('coverage', 0.0):.0f}% of the lesion, {row.get('contrast', 0.0):.1f}x its mean in brain")
    effect = layer.effect_of(index)
    if effect is not None:
        text += "\n" + effect_text(*effect, layer.count)
    return text


def effect_text(rank: int, row: dict, count: int) -> str:
    """What dropping the component does to the lesion (``segment --effects``), and its rank by that."""
    return (f"effect rank {rank} of {count}: dropping it changes {row['changed_voxels']} voxels "
            f"({row.get('changed_ml', 0.0):.2f} mL; +{row.get('added', 0)} / -{row.get('removed', 0)}), "
            f"lesion {row.get('delta_ml', 0.0):+.2f} mL")


def counterfactual_text(summary: dict) -> str:
    """One line from ``counterfactual.json``: what dropping the component did to the lesion."""
    lesion, voxels = summary["lesion"], summary["difference_voxels"]
    text = (f"Without {layer_title(summary['layer'])} #{summary['component']}: lesion {lesion['before_ml']:.2f} -> "
            f"{lesion['after_ml']:.2f} mL ({lesion['delta_ml']:+.2f} mL); {voxels['added']} voxels added (green), "
            f"{voxels['removed']} removed (red)")
    if voxels.get("relabelled"):
        text += f", {voxels['relabelled']} relabelled (yellow)"
    changed = [f"{name} {v['delta_ml']:+.2f}" for name, v in summary.get("labels", {}).items() if v["delta_ml"]]
    if len(summary.get("labels", {})) > 1 and changed:
        text += "; per label (mL): " + ", ".join(changed)
    return text + "."


# The difference labelmap's values (the library's one definition) as segments: value, name, colour.
_DIFFERENCE_COLOURS = {"added": (0.1, 0.8, 0.2), "removed": (0.9, 0.1, 0.1), "relabelled": (0.95, 0.85, 0.1)}
DIFFERENCE_SEGMENTS = tuple((value, name, _DIFFERENCE_COLOURS[name]) for value, name in DIFFERENCE.items() if value)
