"""Reading the worker's NMF component maps for the component browser.

Each Factorizer layer is written at its own resolution with its true physical geometry (DESIGN.md
§5). The browser loads a layer's maps once into memory and then only swaps which map a single
volume node shows, so moving the slider is instant. Reading uses SimpleITK, which Slicer bundles;
geometry is converted from ITK's LPS to Slicer's RAS here, in one place.

Accepted layouts in ``components/`` (the writer chooses; all are read):
  * ``<layer>.nii.gz`` (or .nrrd/.mha) holding a 4-D image (x, y, z, K) or a K-component vector image;
  * ``<layer>_<k>.<ext>`` or ``<layer>/<k>.<ext>`` holding one 3-D map per component.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LesionFactorizerModuleLib.worker import NMF_LAYERS

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def layer_title(layer: str) -> str:
    """'encoder1' -> 'Encoder 1', 'bridge' -> 'Bridge'."""
    match = re.fullmatch(r"([a-z]+)(\d+)", layer)
    return f"{match.group(1).capitalize()} {match.group(2)}" if match else layer.capitalize()


def layer_sort_key(layer: str) -> tuple[int, str]:
    return (NMF_LAYERS.index(layer) if layer in NMF_LAYERS else len(NMF_LAYERS), layer)


def _strip_extension(name: str) -> str | None:
    lowered = name.lower()
    for ext in _EXTENSIONS:
        if lowered.endswith(ext):
            return name[: -len(ext)]
    return None


def ijk_to_ras(origin, spacing, direction) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a 3-D ITK geometry (origin/direction in LPS)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d @ np.diag(np.asarray(spacing, dtype=float))
    m[:3, 3] = np.asarray(origin, dtype=float)
    return _LPS_TO_RAS @ m


@dataclass
class ComponentLayer:
    """All component maps of one layer: ``maps[k]`` is indexed (k, j, i) like Slicer's arrays."""

    name: str
    maps: np.ndarray  # (K, slices, rows, columns), float32
    ijk_to_ras: np.ndarray  # 4x4
    windows: list[tuple[float, float]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return layer_title(self.name)

    @property
    def count(self) -> int:
        return int(self.maps.shape[0])

    def window(self, index: int) -> tuple[float, float]:
        return self.windows[index]


def display_window(values: np.ndarray) -> tuple[float, float]:
    """A robust display range: from 0 (maps are non-negative) to the 99.5th percentile."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    high = float(np.percentile(finite, 99.5))
    low = float(min(0.0, finite.min()))
    if high <= low:
        high = low + (float(finite.max()) - low or 1.0)
    return (low, high)


def read_stack(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Maps (K, slices, rows, columns) and the 4x4 IJK-to-RAS matrix of a 3-D/4-D/vector image."""
    import SimpleITK as sitk

    path = Path(path)
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    dim = image.GetDimension()
    if dim == 4:
        # (K, z, y, x): the 4th ITK axis is the component axis
        direction = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3]
        return array, ijk_to_ras(image.GetOrigin()[:3], image.GetSpacing()[:3], direction)
    if dim != 3:
        raise ValueError(f"{path.name}: component maps must be 3-D or 4-D, not {dim}-D.")
    geometry = ijk_to_ras(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    if image.GetNumberOfComponentsPerPixel() > 1:
        return np.moveaxis(array, -1, 0), geometry
    return array[np.newaxis], geometry


def _layer_of(stem: str) -> tuple[str, int | None]:
    match = re.fullmatch(r"(.+?)[_\-](?:k|c|comp|component)?(\d+)", stem)
    if match and match.group(1) in NMF_LAYERS:
        return match.group(1), int(match.group(2))
    return stem, None


def find_component_files(directory: str | os.PathLike) -> dict[str, list[Path]]:
    """Component files per layer, in component order."""
    root = Path(directory)
    found: dict[str, list[tuple[int, Path]]] = {}
    if not root.is_dir():
        return {}
    for path in sorted(root.iterdir()):
        if path.is_dir():
            for child in sorted(path.iterdir()):
                stem = _strip_extension(child.name)
                if stem is not None and child.is_file():
                    index = int(stem) if stem.isdigit() else len(found.get(path.name, []))
                    found.setdefault(path.name, []).append((index, child))
            continue
        stem = _strip_extension(path.name)
        if stem is None:
            continue
        layer, index = _layer_of(stem)
        found.setdefault(layer, []).append((index if index is not None else -1, path))
    return {layer: [p for _, p in sorted(items, key=lambda t: (t[0], t[1].name))]
            for layer, items in sorted(found.items(), key=lambda kv: layer_sort_key(kv[0]))}


def load_component_layer(layer: str, files: list[Path]) -> ComponentLayer:
    """Read and stack one layer's maps; every file of a layer must share one grid."""
    stacks, geometry = [], None
    for path in files:
        maps, g = read_stack(path)
        if geometry is None:
            geometry = g
        elif not np.allclose(g, geometry, atol=1e-4) or maps.shape[1:] != stacks[0].shape[1:]:
            raise ValueError(f"Component files of layer {layer} are on different grids ({path.name}).")
        stacks.append(maps)
    if not stacks:
        raise ValueError(f"No component maps found for layer {layer}.")
    maps = np.ascontiguousarray(np.concatenate(stacks, axis=0), dtype=np.float32)
    return ComponentLayer(name=layer, maps=maps, ijk_to_ras=geometry,
                          windows=[display_window(m) for m in maps])


def load_components(directory: str | os.PathLike, layers: list[str] | None = None) -> dict[str, ComponentLayer]:
    """All (or the chosen) layers of a components folder, in network order."""
    files = find_component_files(directory)
    return {layer: load_component_layer(layer, paths) for layer, paths in files.items()
            if layers is None or layer in layers}
