"""What a finished run turns into in the scene, decided without Slicer.

The module file only executes these decisions with MRML calls: which segments to create (name,
colour in 0..1, terminology entry, label value), and which probability maps to add under which
channel name with which geometry. Keeping them here lets pytest check them on a real worker output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from LesionFactorizerLib.core.tasks import Task
from LesionFactorizerModuleLib.components import read_stack
from LesionFactorizerModuleLib.report import probability_channels


@dataclass(frozen=True)
class SegmentSpec:
    value: int  # label value in segmentation.<ext>
    name: str  # segment name (the label's title)
    color: tuple[float, float, float]  # 0..1, as vtkSegment expects
    terminology: str  # Slicer terminology entry string (SNOMED CT codes)


def segment_specs(task: Task) -> list[SegmentSpec]:
    """One segment per task label, in label order."""
    return [SegmentSpec(value=int(label.value), name=str(label.title),
                        color=tuple(c / 255.0 for c in label.color), terminology=label.terminology_entry())
            for label in task.labels]


def probability_maps(path: str | os.PathLike, report: Mapping[str, Any]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(channel name, map (slices, rows, columns), 4x4 IJK-to-RAS) per channel of probabilities.<ext>."""
    names = probability_channels(report)
    maps, ijk_to_ras = read_stack(path)
    if len(names) != len(maps):
        raise ValueError(f"{os.fspath(path)} holds {len(maps)} channel(s) but the model names {len(names)} "
                         f"({', '.join(names)}).")
    return [(name, maps[i], ijk_to_ras) for i, name in enumerate(names)]
