"""NMF component maps: from stitched crop-box maps to full-extent layer grids, and files.

Each layer keeps its own resolution: its grid is the model grid at stride ``s`` (spacing × s,
origin moved to the centre of the first s³ block), so Slicer overlays it on the input in physical
space without upsampling. Outside the foreground box the maps are zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from LesionFactorizerLib.pipeline.geometry import Geometry
from LesionFactorizerLib.pipeline.preprocessing import Prepared
from LesionFactorizerLib.pipeline.ranking import METHOD, Masks, best_component, ranked, score_components


def place(prep: Prepared, maps: np.ndarray, stride: int) -> tuple[np.ndarray, Geometry]:
    """Crop-box map ``(K, d, h, w)`` at ``stride`` → map over the whole model extent."""
    geom = prep.model_grid.strided(stride)
    full = np.zeros((maps.shape[0], *geom.shape), dtype=np.float32)
    start = [s // stride for s in prep.crop_start]               # exact: box start is stride-aligned
    extent = [min(math.ceil(n / stride), g - s0) for n, g, s0 in zip(prep.crop_size, geom.size, start)]
    (i0, j0, k0), (ni, nj, nk) = start, extent
    full[:, k0:k0 + nk, j0:j0 + nj, i0:i0 + ni] = maps[:, :nk, :nj, :ni]
    return full, geom


def write_components(prep: Prepared, comps: dict[str, np.ndarray], strides: dict[str, int], folder: Path,
                     order: list[str], show: str = "", compress: bool = True,
                     masks: Masks | None = None, effects: dict[str, dict] | None = None) -> tuple[list[dict], tuple | None]:
    """Write ``<layer>.nrrd`` (one vector voxel of K components) per layer and ``components.json``.

    With ``masks`` (lesion and brain on the model grid) every component is scored by how well it
    explains the predicted lesion (:mod:`.ranking`); each layer entry then lists its components
    best first under ``"ranking"`` and the index names the best ``(layer, component)`` overall.
    With ``effects`` (:func:`.effects.compute_effects`) each layer entry also lists its components
    by effect on the lesion under ``"effect_ranking"`` (and ``"effects_s"``, its cost), and the index
    names the largest effect overall (``"best_effect"``).

    Returns the index entries and, for the overview picture, ``(layer, image, picks)``: the layer of
    the largest effect (else of the best-scoring component, else ``show``, else the first layer
    written), its image kept in memory rather than read back from its file, and the
    ``(component, title)`` pairs to draw."""
    from LesionFactorizerLib.pipeline.effects import METHOD as EFFECT_METHOD
    from LesionFactorizerLib.pipeline.effects import best_effect
    from LesionFactorizerLib.pipeline.io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n in order if n in comps]
    show = show if show in names else (names[0] if names else "")
    top_effect = best_effect(effects) if effects else None
    entries, shown, best = [], None, None
    for name in names:
        full, geom = place(prep, comps[name], strides[name])
        image = geom.to_image(np.ascontiguousarray(np.moveaxis(full, 0, -1)), vector=True)
        path = folder / f"{name}.nrrd"
        write_image(image, path, compress, level=1)   # the largest files of a run: fastest zlib level
        entry = {"layer": name, "stride": int(strides[name]), "components": int(full.shape[0]),
                 "file": path.name, **geom.as_dict(),
                 "max": [float(m) for m in full.reshape(full.shape[0], -1).max(axis=1)]}
        rows = []
        if masks is not None:
            rows = ranked(score_components(full, *masks.at_stride(int(strides[name]), geom.shape)))
            entry["ranking"] = rows
        if effects and name in effects:
            entry["effect_ranking"] = effects[name]["ranking"]
            entry["effects_s"] = effects[name]["seconds"]
        entries.append(entry)
        if top_effect is not None:
            if name == top_effect["layer"]:
                shown = (name, image, [(r["component"], effect_title(name, r, rows)) for r in entry["effect_ranking"][:4]])
        # ties go to the later layer: in execution order that is the one closer to the output
        elif rows and (best is None or rows[0]["score"] >= best[1]["score"]):
            shown = (name, image, [(r["component"], f"{name} #{r['component']} score {r['score']:.2g}")
                                   for r in rows[:4]])
        elif best is None and name == show:
            shown = (name, image, [(k, f"{name} #{k}") for k in range(min(full.shape[0], 4))])
        if rows and (best is None or rows[0]["score"] >= best[1]["score"]):
            best = (name, rows[0])
        del full, image
    index = {"coordinate_system": "LPS", "layers": entries,
             "note": "one NRRD per NMF layer; each voxel holds the layer's K non-negative component values "
                     "(heads x rank) at the layer's own resolution; components are numbered from 0"}
    if masks is not None:
        index["best"] = best_component(entries)
        index["ranking_method"] = METHOD if best else "not ranked: the segmentation has no lesion voxels"
    if effects is not None:
        index["best_effect"] = top_effect
        index["effect_method"] = EFFECT_METHOD if top_effect else (
            EFFECT_METHOD + "; no single component changes any voxel, so the overlap ranking's best is shown")
    (folder / "components.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return entries, shown


def effect_title(layer: str, row: dict, overlap: list[dict]) -> str:
    """A component's title in the overview: its effect, and where the overlap ranking puts it."""
    rank = next((n for n, r in enumerate(overlap, 1) if r["component"] == row["component"]), None)
    where = f", overlap #{rank}" if rank else ""
    return f"{layer} #{row['component']}: {row['changed_voxels']} vox ({row['delta_ml']:+.2f} mL){where}"


def read_index(folder: Path) -> dict:
    """``components.json`` of a run (the counterfactual command reads the ranking from it)."""
    return json.loads((Path(folder) / "components.json").read_text(encoding="utf-8"))
