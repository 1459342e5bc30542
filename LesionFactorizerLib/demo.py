"""The ``demo`` job: every task's bundled sample case through the real pipeline with its bundled
demo model, scored against the sample's ground truth.

It is the first thing a new user runs, so it needs nothing but the repository: the sample cases
(``Resources/SampleData``, see :mod:`LesionFactorizerLib.phantoms.samples`) and one demo model per
task (``Resources/Models/demo-<task>.safetensors``, built by ``training/demo_models.py``). All
files and models are located and checked before the first case runs, so a missing model fails in
a second, not after minutes of work on the other tasks.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.reportspec import FOLDER_KEY, OUTPUTS, REPORT_NAME

DEMO_TASKS = ("tumor", "stroke", "ms-new")
DEFAULT_OUT = "lesionfactorizer-demo"
SUMMARY_NAME = "demo-summary.json"   # also marks a folder as the demo's own, safe to refresh
MODEL_SUFFIX = ".safetensors"
# the outputs the summary points to
SUMMARY_OUTPUTS = (FOLDER_KEY, OUTPUTS.segmentation.key, OUTPUTS.report.key, OUTPUTS.overview.key,
                   OUTPUTS.components.key)


def demo_model_name(task: str) -> str:
    return f"demo-{task}"


def bundled_demo_model(task: str, dirs: list[Path] | None = None) -> Path:
    """The task's demo model among the bundled models (never a user's model of the same name:
    the demo's scores describe the bundled files). ``dirs``: folders to search instead."""
    from LesionFactorizerLib.modelfile import bundled_model_dirs

    dirs = list(dirs) if dirs is not None else bundled_model_dirs()
    name = demo_model_name(task) + MODEL_SUFFIX
    for d in dirs:
        if (d / name).is_file():
            return d / name
    where = " or ".join(str(d) for d in dirs if d.is_dir()) or str(dirs[-1])
    raise UserError(f"bundled demo model {name} is missing from {where}; restore Resources/Models from the "
                    f"repository, or rebuild it with `python training/demo_models.py --tasks {task}`")


def parse_tasks(text: str | None) -> list[str]:
    if not text:
        return list(DEMO_TASKS)
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in DEMO_TASKS]
    if unknown or not tasks:
        raise UserError(f"--tasks {text!r}: choose from {', '.join(DEMO_TASKS)} (comma-separated)")
    return list(dict.fromkeys(tasks))


def _check_out(out: Path, tasks: list[str], overwrite: bool) -> None:
    """The demo refreshes its own earlier results; anything else in the way needs --overwrite."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; choose a folder path")
    if overwrite or not out.is_dir() or (out / SUMMARY_NAME).is_file():
        return
    taken = [t for t in tasks if (out / t).exists()]
    if taken:
        raise UserError(f"{out} already holds {', '.join(taken)} folder(s) that the demo did not write; pass "
                        "--overwrite to replace the results in them or choose another --out")


def _scores(seg_path: str, label_path: str, task: str) -> dict[str, float]:
    from LesionFactorizerLib.evaluation.cohort import evaluate_files

    row = evaluate_files(seg_path, label_path, task)
    keep = {k: v for k, v in row.items()
            if k.startswith(("dice_", "ref_ml_")) or k in ("lesion_f1", "n_ref_lesions", "n_pred_lesions")}
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in keep.items()}


def run_demo(out: str | os.PathLike = DEFAULT_OUT, tasks: list[str] | None = None, device: str = "auto",
             overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Segment each task's sample into ``out/<task>/`` and write ``out/demo-summary.json``."""
    from LesionFactorizerLib.modelfile import read_metadata
    from LesionFactorizerLib.phantoms.samples import sample_case

    tasks = list(tasks or DEMO_TASKS)
    out = Path(out).expanduser().absolute()
    _check_out(out, tasks, overwrite)
    plan = []
    for task in tasks:   # everything located and verified before the first (minutes-long) case
        model = bundled_demo_model(task)
        meta = read_metadata(model)
        if meta["task"] != task:
            raise UserError(f"bundled demo model {model} is for task {meta['task']!r}, not {task!r}; restore "
                            "Resources/Models from the repository")
        sample = sample_case(task)
        missing = [n for n in meta["inputs"] if n not in sample["inputs"]]
        if missing:
            raise UserError(f"the {task} sample case lacks input(s) {', '.join(missing)} that {model.name} needs; "
                            "restore Resources/SampleData from the repository")
        plan.append((task, model, meta, sample))

    from LesionFactorizerLib.pipeline.segment import segment_case
    from LesionFactorizerLib.core.settings import SegmentSettings

    summary: dict[str, Any] = {"format": "lesion-factorizer-demo", "out": str(out), "device": device, "tasks": {}}
    _write_summary(out, summary)   # claims the folder first, so a re-run after an interruption may refresh it
    for task, model, meta, sample in plan:
        log(f"[{task}] segmenting the sample case with {model.name} …")
        t0 = time.perf_counter()
        settings = SegmentSettings(task=task, models=[str(model)], device=device, components=True, overwrite=True)
        result = segment_case({n: sample["inputs"][n] for n in meta["inputs"]}, out / task, settings)
        seconds = time.perf_counter() - t0
        report, outputs = result.report, result.outputs
        summary["tasks"][task] = {
            "seconds": round(seconds, 2),
            "model": model.name,
            "device": report.settings["device"],
            "volumes_ml": report.volumes_ml,
            "regions_ml": report.region_volumes_ml,
            "lesion_count": report.lesion_count,
            "scores": _scores(outputs[OUTPUTS.segmentation.key], sample["label"], task),
            "outputs": {k: v for k, v in outputs.items() if k in SUMMARY_OUTPUTS},
        }
        log(f"[{task}] done in {seconds:.1f} s")
    _write_summary(out, summary)
    return summary


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{SUMMARY_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / SUMMARY_NAME)


def _ml(v: float) -> str:
    return f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def format_task(task: str, r: dict[str, Any]) -> str:
    """Two or three lines per task: time, volumes, lesions, agreement with the ground truth."""
    s = r["scores"]
    vols = r["regions_ml"] or r["volumes_ml"]
    ref = {k.removeprefix("ref_ml_"): v for k, v in s.items() if k.startswith("ref_ml_")}
    vol_text = ", ".join(f"{k} {_ml(v)} mL (truth {_ml(ref[k])})" if k in ref else f"{k} {_ml(v)} mL"
                         for k, v in vols.items())
    dice = ", ".join(f"{k.removeprefix('dice_')} {v:.3f}" for k, v in s.items()
                     if k.startswith("dice_") and v is not None)
    lines = [f"{task:7s} {r['seconds']:6.1f} s on {r['device']}  volumes: {vol_text}",
             f"{'':7s} lesions: {r['lesion_count']}"
             + (f" (truth {s['n_ref_lesions']}" + (f", lesion-wise F1 {s['lesion_f1']:.3f}"
                                                   if s.get("lesion_f1") is not None else "") + ")"
                if s.get("n_ref_lesions") is not None else "")
             + f"  Dice vs ground truth: {dice or 'n/a'}",
             f"{'':7s} results: {r['outputs'][FOLDER_KEY]} ({OUTPUTS.overview.name}, {REPORT_NAME}, "
             f"{OUTPUTS.components.name}/)"]
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    total = sum(r["seconds"] for r in summary["tasks"].values())
    head = (f"lesion-factorizer demo: {len(summary['tasks'])} task(s) in {total:.1f} s; results in "
            f"{summary['out']}\nDemo models were trained on synthetic phantoms: demonstration only, not for "
            "clinical use.")
    return head + "\n" + "\n".join(format_task(t, r) for t, r in summary["tasks"].items())
