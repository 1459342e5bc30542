"""Locating the files a finished worker run produced (README: what `segment` writes).

The worker's final ``done`` event lists its outputs by key with absolute paths: the keys of
``LesionFactorizerLib.core.reportspec.OUTPUTS`` (those a run writes), plus ``FOLDER_KEY`` for the folder.
Only that is accepted; a missing required output or a listed file that does not exist is an error,
so a broken run is reported instead of half-imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from LesionFactorizerLib.core.reportspec import FOLDER_KEY, OUTPUTS


@dataclass(frozen=True)
class OutputFiles:
    """The run's files by output key (``files.segmentation``, ``files.lesions``, …; None: not written)."""

    folder: Path
    paths: Mapping[str, Path | None]

    def __getattr__(self, key: str) -> Path | None:
        paths = self.__dict__.get("paths", {})
        if key in paths:
            return paths[key]
        raise AttributeError(key)


def find_outputs(folder: str | os.PathLike, outputs: Mapping[str, Any]) -> OutputFiles:
    """The files of a done event's ``outputs``; relative paths (not written today) resolve under folder."""
    folder = Path(folder)
    unknown = sorted(set(outputs) - set(OUTPUTS.keys()) - {FOLDER_KEY})
    if unknown:
        raise ValueError(f"the worker listed unknown outputs {', '.join(unknown)}; update the extension.")
    paths: dict[str, Path | None] = {}
    for output in OUTPUTS:
        key, value = output.key, outputs.get(output.key)
        if value is None:
            if output.required:
                raise ValueError(f"the worker finished without a {key} output; see the log.")
            paths[key] = None
            continue
        if not isinstance(value, str) or not value:
            raise ValueError(f"the worker's {key} output is not a path: {value!r}.")
        path = Path(value) if Path(value).is_absolute() else folder / value
        if not path.exists():
            raise ValueError(f"the worker listed {key} output {path}, which does not exist.")
        paths[key] = path
    return OutputFiles(folder=folder, paths=paths)
