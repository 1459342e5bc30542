"""Mapping the worker's report.json to the rows of the results table.

The report lists per-label volumes (mL) and lesion counts (report.json, README). The table shows one row
per task label — also for labels the model did not find, with 0 mL, because "no enhancing tumour"
is a finding — plus, for ms-new, the number of new lesions in the summary line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.reportspec import FORMAT, FORMAT_VERSION, parse_report, view


@dataclass(frozen=True)
class ResultRow:
    value: int  # label value; 0 for a region row
    name: str
    volume_ml: float
    lesion_count: int | None
    kind: str = "label"  # "label" or "region" (a union of labels, e.g. BraTS whole tumour)

    def cells(self) -> list[str]:
        count = "" if self.lesion_count is None else str(self.lesion_count)
        return [self.name, f"{self.volume_ml:.2f}", count]


TABLE_HEADERS = ["Segment", "Volume (mL)", "Lesions"]


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """report.json as written by the worker, checked by the library's parser
    (``LesionFactorizerLib.core.reportspec.parse_report``); anything else is refused with a one-line reason."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{Path(path).name} is not a report (expected a JSON object).")
    found = view(data)
    if (found.format, found.format_version) != (FORMAT, FORMAT_VERSION):
        raise ValueError(f"{Path(path).name} is not a LesionFactorizer report of format version {FORMAT_VERSION} "
                         f"(found {found.format!r} version {found.format_version!r}); update the extension.")
    try:
        parse_report(data, Path(path).name)
    except UserError as exc:
        raise ValueError(str(exc)) from None
    return data


def result_rows(report: Mapping[str, Any], task_labels: Sequence[Any],
                task_regions: Sequence[Any] = ()) -> list[ResultRow]:
    """One row per task label (in the task's order, named by its title), then one per region.

    The report lists every task label under its short name, found or not (0 mL is a finding). The
    per-lesion table is not split by label, so a lesion count is shown only for single-label tasks.
    """
    parsed = view(report)
    labels, regions = parsed.labels, parsed.regions
    rows = []
    for label in task_labels:
        entry = labels.get(label.name)
        if not isinstance(entry, Mapping) or entry.get("value") != label.value:
            raise ValueError(f"report.json has no entry for label {label.name} (value {label.value}); it was "
                             f"written for another task or by another version.")
        count = parsed.lesion_count if len(task_labels) == 1 else None
        rows.append(ResultRow(value=int(label.value), name=str(label.title), volume_ml=float(entry["volume_ml"]),
                              lesion_count=count))
    for region in task_regions:
        entry = regions.get(region.name)
        if not isinstance(entry, Mapping):
            raise ValueError(f"report.json has no entry for region {region.name}.")
        rows.append(ResultRow(value=0, name=f"{region.title} ({region.name})", kind="region",
                              volume_ml=float(entry["volume_ml"]), lesion_count=None))
    return rows


def lesion_count(report: Mapping[str, Any]) -> int:
    """Total number of connected lesions (after small-lesion removal)."""
    return int(view(report).lesion_count)


def probability_channels(report: Mapping[str, Any]) -> list[str]:
    """Names of the channels in probabilities.<ext>, in file order.

    report.json lists them (``probability_channels``); reports written before that key existed
    are named from the model file the report says was used (its metadata is torch-free to read),
    never from the task's channel list: a model decides its own outputs (BraTS regions vs. labels).
    """
    listed = view(report).probability_channels
    if isinstance(listed, list) and all(isinstance(c, str) for c in listed):
        return list(listed)
    from LesionFactorizerLib.modelfile import read_metadata

    model = view(report).model
    if not isinstance(model, Mapping) or not isinstance(model.get("path"), str):
        raise ValueError("report.json does not name the model it used; probability maps cannot be named.")
    channels = read_metadata(model["path"])["outputs"]["channels"]
    return [str(c) for c in channels if c != "background"]


def registration_text(report: Mapping[str, Any]) -> str:
    """What happened to the baseline (ms-new): registered, how far it was moved and how well, or
    why not. Empty for reports without a registration entry (other tasks, older reports)."""
    reg = view(report).registration
    if not isinstance(reg, Mapping):
        return ""
    shift = (reg.get("estimate") or {}).get("displacement_mm") or {}
    if not reg.get("performed"):
        if reg.get("mode") == "never":
            return "Baseline not registered (registration off)"
        return f"Baseline already aligned with the follow-up (residual {float(shift.get('mean', 0.0)):.1f} mm)"
    transform = reg.get("transform") or {}
    after = reg.get("metric_after") or {}
    text = (f"Baseline registered to the follow-up ({transform.get('kind', 'rigid')}: "
            f"{float(transform.get('rotation_deg', 0.0)):.1f}°, head moved {float(shift.get('mean', 0.0)):.1f} mm on "
            f"average); quality {reg.get('quality')}")
    if "correlation" in after:
        text += f" (correlation {float(after['correlation']):.2f})"
    return text


def summary_line(report: Mapping[str, Any], task: str) -> str:
    """Short text above the table: number of lesions (new lesions for ms-new), the baseline's
    registration (ms-new) and warnings."""
    count = lesion_count(report)
    parts = [f"New lesions: {count}" if task == "ms-new" else f"Lesions: {count}"]
    registration = registration_text(report)
    if registration:
        parts.append(registration)
    warnings = view(report).warnings
    if warnings:
        parts.append(f"{len(warnings)} warning(s): " + "; ".join(str(w) for w in warnings[:3]))
    return ". ".join(parts)
