"""``lesion-factorizer batch``: segment a cohort, one output folder per case.

Cases come from a datalist (CSV with a ``case_id`` column and one column per input name, or JSON:
a list of ``{"case_id": ..., "inputs": {name: path}}``; relative paths are relative to the
datalist; other columns such as ``label`` or ``fold`` are ignored) or from a folder with one
sub-folder per case whose files are recognised by name patterns. A failing case is reported and
the others continue; ``summary.csv`` aggregates volumes and lesion counts. Case ids name the
per-case output folders, so they must be plain names.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from LesionFactorizerLib.errors import UserError

NAME = "batch"
HELP = "segment many cases (datalist CSV/JSON or a folder of case folders) with one model load"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LesionFactorizerLib.cli.segment import add_segment_options

    parser.add_argument("source", metavar="DATALIST|FOLDER",
                        help="CSV/JSON datalist, or a folder with one sub-folder per case")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the per-case outputs")
    parser.add_argument("--resume", action="store_true", help="skip cases whose report.json already exists")
    add_segment_options(parser)


def read_cases(source: str | Path, task) -> list[tuple[str, dict[str, str]]]:
    """(case id, {input name: path}) for every case of a datalist or case folder."""
    from LesionFactorizerLib.datalist import read_datalist
    from LesionFactorizerLib.tasks import is_image_file

    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} does not exist; give a CSV/JSON datalist or a folder of case folders")
    if not source.is_dir():
        # a training datalist's label / fold columns are not inputs; missing inputs fail per case
        return [(e.id, e.inputs) for e in read_datalist(source, task.input_names)]
    cases = []
    for case_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        entries = [str(p) for p in sorted(case_dir.iterdir()) if (p.is_file() and is_image_file(p)) or p.is_dir()]
        cases.append((case_dir.name, task.match_inputs(entries)))
    if not cases:
        raise UserError(f"folder {source} has no case sub-folders")
    return cases


def _read_report(path: Path) -> dict | None:
    """The report of an earlier run, or None when it is missing or unreadable (then the case is redone)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _summary_row(case_id: str, status: str, error: str, report: dict | None, task) -> dict:
    row = {"case_id": case_id, "status": status, "error": error}
    if report:
        row["lesion_count"] = report.get("lesion_count")
        for lb in task.labels:
            row[f"{lb.name}_ml"] = report.get("volumes_ml", {}).get(lb.name)
        for name, region in report.get("regions", {}).items():
            row[f"{name}_ml"] = region.get("volume_ml")
        row["seconds"] = report.get("timings_s", {}).get("total")
    return row


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.cli.segment import terminate_cleanly
    from LesionFactorizerLib.pipeline.progress import Progress

    terminate_cleanly()
    progress = Progress(args.progress)
    with progress.errors_reported():
        return _run(args, progress)


def _run(args: argparse.Namespace, progress) -> int:
    from LesionFactorizerLib.cli.segment import options_from_args
    from LesionFactorizerLib.pipeline.progress import Progress
    from LesionFactorizerLib.pipeline.segment import Segmenter

    segmenter = Segmenter(options_from_args(args))   # one for the cohort: models load once
    task = segmenter.task
    cases = read_cases(args.source, task)
    out_root = Path(args.output)
    rows, failures, bad_input = [], 0, 0
    for index, (case_id, inputs) in enumerate(cases):
        case_out = out_root / case_id
        status, error, report = "done", "", None
        t0 = time.monotonic()
        redo = False
        if args.resume and (case_out / "report.json").is_file():
            report = _read_report(case_out / "report.json")
            if report is not None:
                status = "skipped"
            else:
                redo = True   # an unreadable report means the case is not done; its outputs are ours
        if status != "skipped":
            try:
                report = segmenter.segment(inputs, case_out, args.overwrite or redo, Progress("none")).report
                if redo:
                    progress.warning(f"{case_id}: the report.json of an earlier run was unreadable; segmented again")
            except UserError as exc:
                status, error = "failed", str(exc)
                failures += 1
                bad_input += 1
            except Exception as exc:  # one broken case must not stop the cohort
                status, error = "failed", f"unexpected: {type(exc).__name__}: {exc}"
                failures += 1
        rows.append(_summary_row(case_id, status, error, report, task))
        progress.case_done(case_id, status, error, time.monotonic() - t0, index + 1, len(cases))
    out_root.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    summary = out_root / "summary.csv"
    tmp = summary.with_name(".summary.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(summary)
    done = sum(r["status"] != "failed" for r in rows)
    message = f"{done} of {len(rows)} case(s) segmented, {failures} failed; summary: {summary}"
    progress.done({"summary": str(summary), "dir": str(out_root)}, message)
    if args.progress != "jsonl":
        print(message, file=sys.stderr)
    if failures:
        return 1 if failures > bad_input else 2
    return 0
