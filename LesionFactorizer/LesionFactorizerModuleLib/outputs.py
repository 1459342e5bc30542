"""Locating the files a finished worker run produced (README: what `segment` writes).

The worker's final ``done`` event lists its outputs by key with absolute paths
(``LesionFactorizerLib.pipeline.segment.segment_case``): segmentation, report, lesions and, when
asked for, components (+ components_index), probabilities, uncertainty, overview, dicom_seg, plus ``dir``. Only that is
accepted; a missing required output or a listed file that does not exist is an error, so a broken
run is reported instead of half-imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_REQUIRED = ("segmentation", "report")
_OPTIONAL = ("components", "components_index", "probabilities", "overview", "lesions", "dir", "dicom_seg", "uncertainty")


@dataclass(frozen=True)
class OutputFiles:
    folder: Path
    segmentation: Path
    report: Path
    components: Path | None
    probabilities: Path | None
    overview: Path | None
    lesions_csv: Path | None
    dicom_seg: Path | None = None  # segmentation.dcm, when the run was asked for a DICOM SEG
    uncertainty: Path | None = None


def find_outputs(folder: str | os.PathLike, outputs: Mapping[str, Any]) -> OutputFiles:
    """The files of a done event's ``outputs``; relative paths (not written today) resolve under folder."""
    folder = Path(folder)
    unknown = sorted(set(outputs) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(f"the worker listed unknown outputs {', '.join(unknown)}; update the extension.")
    paths: dict[str, Path | None] = {}
    for key in (*_REQUIRED, *_OPTIONAL):
        value = outputs.get(key)
        if value is None:
            if key in _REQUIRED:
                raise ValueError(f"the worker finished without a {key} output; see the log.")
            paths[key] = None
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"the worker's {key} output is not a path: {value!r}.")
        path = Path(value) if Path(value).is_absolute() else folder / value
        if not path.exists():
            raise ValueError(f"the worker listed {key} output {path}, which does not exist.")
        paths[key] = path
    return OutputFiles(folder=folder, segmentation=paths["segmentation"], report=paths["report"],
                       components=paths["components"], probabilities=paths["probabilities"],
                       overview=paths["overview"], lesions_csv=paths["lesions"], dicom_seg=paths["dicom_seg"],
                       uncertainty=paths["uncertainty"])
