"""The extension's terminology context (a Slicer ``.term.json``), derived from the task labels.

Slicer resolves a segment's terminology entry against the contexts it has loaded. The labels'
codes live in ``LesionFactorizerLib.core.tasks``; this file turns them into the category/type context
the entries name, so the shipped ``Resources/Terminology/LesionFactorizer.term.json`` is derived,
never edited by hand (``python -m LesionFactorizerModuleLib.terminology FILE`` rewrites it; a test
checks that it is current). ``resolves`` answers, without Slicer, whether an entry string finds its
category and type in such a context.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from LesionFactorizerLib.core.tasks import SLICER_CATEGORY_CONTEXT, TASKS, LabelSpec

FILE_NAME = "LesionFactorizer.term.json"
SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"


def _coded(code) -> dict[str, str]:
    return {"CodingSchemeDesignator": code.scheme, "CodeValue": code.value, "CodeMeaning": code.meaning}


def build_context(labels: Iterable[LabelSpec] | None = None) -> dict[str, Any]:
    """The category/type context holding every label of every task (one type per code)."""
    if labels is None:
        labels = [label for task in TASKS.values() for label in task.labels]
    categories: dict[str, dict[str, Any]] = {}
    for label in labels:
        category = categories.setdefault(label.category.value, {**_coded(label.category), "showAnatomy": "true",
                                                                 "Type": []})
        if any(t["CodeValue"] == label.type.value for t in category["Type"]):
            continue  # the same concept in two tasks (e.g. edema) is one type; the first colour wins
        category["Type"].append({**_coded(label.type), "recommendedDisplayRGBValue": list(label.color)})
    return {"SegmentationCategoryTypeContextName": SLICER_CATEGORY_CONTEXT, "@schema": SCHEMA,
            "SegmentationCodes": {"Category": list(categories.values())}}


def render(context: Mapping[str, Any]) -> str:
    return json.dumps(context, indent=2, ensure_ascii=False) + "\n"


def resolves(entry: str, context: Mapping[str, Any]) -> bool:
    """True when a serialised terminology entry names this context and finds its category and type."""
    parts = entry.split("~")
    if len(parts) != 7 or parts[0] != context.get("SegmentationCategoryTypeContextName"):
        return False
    category_code, type_code = parts[1].split("^"), parts[2].split("^")
    for category in context.get("SegmentationCodes", {}).get("Category", []):
        if [category["CodingSchemeDesignator"], category["CodeValue"]] == category_code[:2]:
            return any([t["CodingSchemeDesignator"], t["CodeValue"]] == type_code[:2] for t in category["Type"])
    return False


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(render(build_context()), encoding="utf-8")
