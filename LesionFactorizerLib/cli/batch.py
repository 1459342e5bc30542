"""``lesion-factorizer batch``: segment a cohort, one output folder per case.

Cases come from a datalist (CSV with a ``case_id`` column and one column per input name, or JSON:
a list of ``{"case_id": ..., "inputs": {name: path}}``; relative paths are relative to the
datalist) or from a folder with one sub-folder per case whose files are recognised by name
patterns. A failing case is reported and the others continue; ``summary.csv`` aggregates volumes
and lesion counts.
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

_IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LesionFactorizerLib.cli.segment import add_segment_options

    parser.add_argument("source", metavar="DATALIST|FOLDER",
                        help="CSV/JSON datalist, or a folder with one sub-folder per case")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the per-case outputs")
    parser.add_argument("--resume", action="store_true", help="skip cases whose report.json already exists")
    add_segment_options(parser)


def _case_id_key(row: dict) -> str:
    for key in ("case_id", "case", "id", "subject"):
        if key in row:
            return key
    raise UserError("the datalist needs a case_id column (or case / id / subject)")


def read_cases(source: str | Path, task) -> list[tuple[str, dict[str, str]]]:
    """(case id, {input name: path}) for every case of a datalist or case folder."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} does not exist; give a CSV/JSON datalist or a folder of case folders")
    cases: list[tuple[str, dict[str, str]]] = []
    if source.is_dir():
        for case_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            entries = [str(p) for p in sorted(case_dir.iterdir())
                       if (p.is_file() and p.name.lower().endswith(_IMAGE_ENDINGS)) or p.is_dir()]
            cases.append((case_dir.name, task.match_inputs(entries)))
        if not cases:
            raise UserError(f"folder {source} has no case sub-folders")
        return cases
    base = source.parent
    if source.suffix.lower() == ".json":
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"datalist {source} is not valid JSON ({exc})") from None
        if isinstance(data, dict):
            data = data.get("cases", data.get("data"))
        if not isinstance(data, list):
            raise UserError(f"datalist {source} must hold a list of cases")
        rows = []
        for item in data:
            if not isinstance(item, dict):
                raise UserError(f"datalist {source}: every case must be an object")
            inputs = item.get("inputs", {k: v for k, v in item.items() if k in task.input_names})
            rows.append(({"case_id": item.get("case_id", item.get("id"))}, inputs))
    elif source.suffix.lower() in (".csv", ".tsv"):
        with open(source, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if source.suffix.lower() == ".tsv" else ",")
            rows = []
            for row in reader:
                key = _case_id_key(row)
                rows.append(({"case_id": row[key]}, {k: v for k, v in row.items() if k != key and v}))
    else:
        raise UserError(f"datalist {source} must be .csv, .tsv or .json")
    for i, (head, inputs) in enumerate(rows):
        case_id = str(head["case_id"] or f"case{i + 1:04d}")
        resolved = {k: str(Path(v) if Path(v).is_absolute() else base / v) for k, v in inputs.items()}
        cases.append((case_id, resolved))
    ids = [c for c, _ in cases]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise UserError(f"duplicate case ids in {source}: {', '.join(dupes[:5])}")
    return cases


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
    from LesionFactorizerLib.cli.segment import options_from_args, terminate_cleanly
    from LesionFactorizerLib.modelfile import default_model, find_model, load_model_file, read_metadata
    from LesionFactorizerLib.pipeline.progress import Progress
    from LesionFactorizerLib.pipeline.segment import segment_case
    from LesionFactorizerLib.tasks import get_task

    terminate_cleanly()
    if args.model:
        paths = [find_model(m) for m in args.model]
    elif args.task:
        paths = [default_model(get_task(args.task).name)]
    else:
        raise UserError("give --task or --model")
    task = get_task(args.task or read_metadata(paths[0])["task"])
    cases = read_cases(args.source, task)
    out_root = Path(args.output)
    jsonl = args.progress == "jsonl"
    loaded = None
    rows, failures, bad_input = [], 0, 0
    bar = None
    if args.progress == "bar":
        from tqdm import tqdm

        bar = tqdm(total=len(cases), file=sys.stderr, desc="cases")
    for index, (case_id, inputs) in enumerate(cases):
        case_out = out_root / case_id
        status, error, report = "done", "", None
        t0 = time.monotonic()
        if args.resume and (case_out / "report.json").is_file():
            status = "skipped"
            report = json.loads((case_out / "report.json").read_text(encoding="utf-8"))
        else:
            try:
                if loaded is None:
                    loaded = [load_model_file(p) for p in paths]
                opts = options_from_args(args, inputs, str(case_out))
                opts.task = task.name
                segment_case(opts, Progress("none"), loaded=loaded)
                report = json.loads((case_out / "report.json").read_text(encoding="utf-8"))
            except UserError as exc:
                status, error = "failed", str(exc)
                failures += 1
                bad_input += 1
            except Exception as exc:  # one broken case must not stop the cohort
                status, error = "failed", f"unexpected: {type(exc).__name__}: {exc}"
                failures += 1
        rows.append(_summary_row(case_id, status, error, report, task))
        if jsonl:
            print(json.dumps({"event": "case", "case_id": case_id, "status": status, "message": error,
                              "seconds": round(time.monotonic() - t0, 2)}), flush=True)
            print(json.dumps({"event": "progress", "stage": "batch", "fraction": round((index + 1) / len(cases), 4),
                              "eta_s": None, "message": case_id}), flush=True)
        elif bar is not None:
            bar.update(1)
            if status == "failed":
                bar.write(f"{case_id}: FAILED: {error}")
    if bar is not None:
        bar.close()
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
    if jsonl:
        print(json.dumps({"event": "done", "outputs": {"summary": str(summary), "dir": str(out_root)},
                          "message": message}), flush=True)
    else:
        print(message, file=sys.stderr)
    if failures:
        return 1 if failures > bad_input else 2
    return 0
