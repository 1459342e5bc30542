"""Generate a whole synthetic data set into a folder, all-or-nothing.

Cases are written into a hidden staging folder inside the output folder and moved into place only
when every case succeeded, so an interrupted or failed run leaves no half-written case behind
(same file system, so the moves are renames).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable

from LesionFactorizerLib.datasets import PHANTOM_LABELS, PHANTOM_LAYOUT
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.phantoms.generate import CHANNELS, LABELS, TASKS, generate_case
from LesionFactorizerLib.phantoms.layouts import case_id, case_roots, write_case

MANIFEST = "phantom_manifest.json"
_BIDS = {"Name": "LesionFactorizer synthetic stroke phantoms (ISLES'22 layout)", "BIDSVersion": "1.6.0",
         "DatasetType": "raw", "License": "CC0"}


def write_dataset(
    task: str,
    n: int,
    out: str,
    seed: int,
    spacing=None,
    size=None,
    start: int = 0,
    overwrite: bool = False,
    preview: bool = False,
    on_case: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Write cases ``start`` … ``start + n − 1``; returns one record per case (files, parameters)."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; give a folder (it is created if missing)")
    indices = range(start, start + n)
    if not overwrite:
        for i in indices:
            for root in case_roots(task, i):
                if os.path.exists(os.path.join(out, root)):
                    raise UserError(
                        f"{os.path.join(out, root)} already exists; use --overwrite, another --out, or --start"
                    )
    os.makedirs(out, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".phantom-staging-", dir=out)
    records = []
    try:
        for i in indices:
            case = generate_case(task, seed, i, spacing=spacing, size=size)
            files = write_case(case, stage)
            if preview:
                from LesionFactorizerLib.phantoms.montage import save_montage

                os.makedirs(os.path.join(stage, "previews"), exist_ok=True)
                save_montage(case, os.path.join(stage, "previews", f"{case_id(task, i)}.png"))
            rec = {"index": i, "files": files, "shape_xyz": list(case.label.shape[::-1]),
                   "spacing_xyz": list(case.geometry["spacing"]), "parameters": case.meta}
            records.append(rec)
            if on_case:
                on_case(i, rec)
        for i in indices:
            for root in case_roots(task, i):
                dst = os.path.join(out, root)
                if os.path.exists(dst):
                    shutil.rmtree(dst)
                os.makedirs(os.path.dirname(dst) or out, exist_ok=True)
                os.replace(os.path.join(stage, root), dst)
        if preview:
            os.makedirs(os.path.join(out, "previews"), exist_ok=True)
            for name in os.listdir(os.path.join(stage, "previews")):
                os.replace(os.path.join(stage, "previews", name), os.path.join(out, "previews", name))
        if PHANTOM_LAYOUT[task] == "isles22":   # BIDS wants a description per folder
            for sub, kind in (("rawdata", "raw"), ("derivatives", "derivative")):
                path = os.path.join(out, sub, "dataset_description.json")
                if not os.path.exists(path):
                    _write_json(path, dict(_BIDS, DatasetType=kind))
        _update_manifest(out, task, seed, records)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return records


def _write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def _update_manifest(out: str, task: str, seed: int, records: list[dict]) -> None:
    """Describe the data set (task, label values, per-case generator parameters) next to it."""
    path = os.path.join(out, MANIFEST)
    data = {"generator": "LesionFactorizer phantoms", "task": task, "channels": list(CHANNELS[task]),
            "labels_in_files": _file_labels(task), "cases": {}}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as fh:
                old = json.load(fh)
            if old.get("task") == task:
                data["cases"] = old.get("cases", {})
        except (OSError, ValueError):
            pass
    for rec in records:
        data["cases"][str(rec["index"])] = dict(rec, seed=seed)
    _write_json(path, data)


def _file_labels(task: str) -> dict[str, str]:
    """Raw value in the written files → label title (BraTS files store enhancing tumour as 4)."""
    table = PHANTOM_LABELS[task]
    if isinstance(table, str):   # binary masks: the task's single label is stored as is
        return {str(k): v for k, v in LABELS[task].items()}
    return {str(raw): LABELS[task][value] for raw, value in sorted(table.items())}
