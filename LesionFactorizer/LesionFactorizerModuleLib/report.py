"""Mapping the worker's report.json to the rows of the results table.

The report lists per-label volumes (mL) and lesion counts (DESIGN.md §4). The table shows one row
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
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{Path(path).name} is not a report (expected a JSON object).")
    return data


def _label_entries(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Per-label entries in whichever of the documented shapes the report uses."""
    labels = report.get("labels")
    if isinstance(labels, list):
        return [e for e in labels if isinstance(e, Mapping)]
    if isinstance(labels, Mapping):
        entries = []
        for key, entry in labels.items():
            entry = dict(entry) if isinstance(entry, Mapping) else {"volume_ml": entry}
            entry.setdefault("name", key)
            if "value" not in entry and str(key).isdigit():
                entry["value"] = int(key)
            entries.append(entry)
        return entries
    volumes = report.get("volumes_ml") or report.get("volume_ml")
    if isinstance(volumes, Mapping):
        return [{"name": k, "volume_ml": v} for k, v in volumes.items()]
    return []


def _number(entry: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def result_rows(report: Mapping[str, Any], task_labels: Sequence[Any],
                task_regions: Sequence[Any] = ()) -> list[ResultRow]:
    """One row per task label (in the task's order, named by its title), then one per region.

    Entries are matched by label value, then by short name ("ET") or title. With a single label
    the report's total lesion count is that label's count.
    """
    entries = _label_entries(report)
    by_value = {int(e["value"]): e for e in entries if isinstance(e.get("value"), int)}
    by_name = {str(e.get("name", "")).lower(): e for e in entries}
    rows = []
    for label in task_labels:
        value, name = int(label.value), str(label.name)
        title = str(getattr(label, "title", name))
        entry = by_value.get(value) or by_name.get(name.lower()) or by_name.get(title.lower()) or {}
        volume = _number(entry, "volume_ml", "volume_mL", "ml", "volume") or 0.0
        count = _number(entry, "lesion_count", "count", "lesions", "n_lesions")
        if count is None and len(task_labels) == 1:
            count = lesion_count(report)
        rows.append(ResultRow(value=value, name=title, volume_ml=volume,
                              lesion_count=None if count is None else int(count)))
    regions = report.get("regions") if isinstance(report.get("regions"), Mapping) else {}
    for region in task_regions:
        entry = regions.get(region.name)
        if isinstance(entry, Mapping):
            rows.append(ResultRow(value=0, name=f"{region.title} ({region.name})", kind="region",
                                  volume_ml=_number(entry, "volume_ml") or 0.0, lesion_count=None))
    return rows


def lesion_count(report: Mapping[str, Any]) -> int | None:
    """Total number of (connected) lesions the report lists, if it lists any."""
    for key in ("lesion_count", "n_lesions", "new_lesion_count"):
        value = report.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    lesions = report.get("lesions")
    if isinstance(lesions, list):
        return len(lesions)
    if isinstance(lesions, Mapping):
        count = lesions.get("count")
        if isinstance(count, int):
            return count
    return None


def summary_line(report: Mapping[str, Any], task: str) -> str:
    """Short text above the table: total volume and, for ms-new, the number of new lesions."""
    parts = []
    count = lesion_count(report)
    if task == "ms-new":
        parts.append(f"New lesions: {count if count is not None else 'unknown'}")
    elif count is not None:
        parts.append(f"Lesions: {count}")
    warnings = report.get("warnings")
    if isinstance(warnings, list) and warnings:
        parts.append(f"{len(warnings)} warning(s): " + "; ".join(str(w) for w in warnings[:3]))
    return ". ".join(parts)
