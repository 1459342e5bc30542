"""Locating the files a finished worker run produced (DESIGN.md §4 "Outputs").

The worker's final ``done`` event lists its outputs; when a key is absent we fall back to the
documented file names in the output folder, so the importer works with either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_IMAGE_EXTENSIONS = (".nii.gz", ".nrrd", ".nii", ".mha", ".seg.nrrd")


@dataclass(frozen=True)
class OutputFiles:
    folder: Path
    segmentation: Path | None
    report: Path | None
    components: Path | None
    probabilities: Path | None
    overview: Path | None
    lesions_csv: Path | None


def _listed(folder: Path, outputs: Mapping[str, Any], *keys: str) -> Path | None:
    for key in keys:
        value = outputs.get(key)
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
            path = Path(value)
            path = path if path.is_absolute() else folder / path
            if path.exists():
                return path
    return None


def _by_name(folder: Path, stem: str) -> Path | None:
    for ext in _IMAGE_EXTENSIONS:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def find_outputs(folder: str | os.PathLike, outputs: Mapping[str, Any] | None = None) -> OutputFiles:
    folder = Path(folder)
    outputs = outputs or {}
    components = _listed(folder, outputs, "components", "components_dir")
    if components is None and (folder / "components").is_dir():
        components = folder / "components"
    report = _listed(folder, outputs, "report", "report_json")
    if report is None and (folder / "report.json").is_file():
        report = folder / "report.json"
    return OutputFiles(
        folder=folder,
        segmentation=_listed(folder, outputs, "segmentation") or _by_name(folder, "segmentation"),
        report=report,
        components=components,
        probabilities=_listed(folder, outputs, "probabilities") or _by_name(folder, "probabilities"),
        overview=_listed(folder, outputs, "overview", "overview_png")
        or ((folder / "overview.png") if (folder / "overview.png").is_file() else None),
        lesions_csv=_listed(folder, outputs, "lesions", "lesions_csv")
        or ((folder / "lesions.csv") if (folder / "lesions.csv").is_file() else None),
    )
