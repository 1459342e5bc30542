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
                     order: list[str], show: str = "", compress: bool = True) -> tuple[list[dict], tuple | None]:
    """Write ``<layer>.nrrd`` (one vector voxel of K components) per layer and ``components.json``.

    Returns the index entries and ``(layer, image)`` of layer ``show`` (else the first layer
    written) for the overview picture, kept in memory rather than read back from its file."""
    from LesionFactorizerLib.pipeline.io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n in order if n in comps]
    show = show if show in names else (names[0] if names else "")
    entries, shown = [], None
    for name in names:
        full, geom = place(prep, comps[name], strides[name])
        image = geom.to_image(np.ascontiguousarray(np.moveaxis(full, 0, -1)), vector=True)
        path = folder / f"{name}.nrrd"
        write_image(image, path, compress)
        entries.append({"layer": name, "stride": int(strides[name]), "components": int(full.shape[0]),
                        "file": path.name, **geom.as_dict(),
                        "max": [float(m) for m in full.reshape(full.shape[0], -1).max(axis=1)]})
        if name == show:
            shown = (name, image)
        del full, image
    (folder / "components.json").write_text(json.dumps(
        {"coordinate_system": "LPS", "layers": entries,
         "note": "one NRRD per NMF layer; each voxel holds the layer's K non-negative component values "
                 "(heads x rank) at the layer's own resolution"}, indent=2), encoding="utf-8")
    return entries, shown
