"""``lesion-factorizer batch``: segment a cohort, one output folder per case.

Cases come from a datalist (CSV with a ``case_id`` column and one column per input name, or JSON:
a list of ``{"case_id": ..., "inputs": {name: path}}``; relative paths are relative to the
datalist; other columns such as ``label`` or ``fold`` are ignored) or from a folder with one
sub-folder per case whose files are recognised by name patterns. A failing case is reported and
the others continue; ``summary.csv`` aggregates volumes and lesion counts. In one process the next
case is read and the previous one written while the networks run on the current one
(``cli/batch_pipeline.py``; ``--no-overlap``: one case at a time).

Each case's output folder is named by :func:`case_folder`: the case id itself when it is a short,
plain name that no batch output uses, else a readable part of it and a hash of the whole id (the
summary's ``folder`` column maps ids to folders). One batch at a time writes into an output folder:
an OS lock (released by the kernel when the process ends, so a crashed run leaves none) refuses a
second run into the same folder; the N shards of one split may run side by side.

Cohorts beyond one process: ``--shard K/N`` takes every N-th case starting with the K-th (in
datalist order, or case-folder name order), so N jobs given the same list split it without
overlap or coordinator and each writes ``summary.shard-K-of-N.csv``; ``--merge`` checks that
all N shard summaries are there and together cover the list exactly once, checks every shard
summary (columns, encoding, folders) and that each finished case's result folder is there and
complete, and writes ``summary.csv``. ``--devices 0,1`` runs one worker process per device (GPU
index or ``cpu``), each loading the models once and taking the next case from a shared queue.

``--resume`` skips a case only when its report.json records the same input files (paths and
SHA-256) that the list gives now and every output it lists is there; otherwise the case is
segmented again.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import os
import re
import sys
import time
from pathlib import Path

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.reportspec import FOLDER_KEY, REPORT_NAME, Report, read_report

NAME = "batch"
HELP = "segment many cases (datalist CSV/JSON or a folder of case folders) with one model load"
SUMMARY = "summary.csv"
SUMMARY_COLUMNS = ("case_id", "folder", "status", "error")   # the columns --merge relies on
STATUSES = ("done", "skipped", "failed")
LOCK = ".lesion-factorizer-batch.lock"
# Room for the temporary sibling a case's results are assembled in (".<folder>.partial-<pid>-<random>")
# within a file name's 255 bytes.
FOLDER_BYTES = 120
_FOLDER_UNSAFE = set('<>:"/\\|?*')   # path separators and what Windows refuses in names
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"{p}{n}" for p in ("com", "lpt") for n in range(1, 10))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LesionFactorizerLib.cli.segment import add_segment_options
    from LesionFactorizerLib.serve.remote_batch import add_server_options

    parser.add_argument("source", metavar="DATALIST|FOLDER",
                        help="CSV/JSON datalist, or a folder with one sub-folder per case")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for the per-case outputs")
    parser.add_argument("--resume", action="store_true", help="skip cases already segmented from the same input "
                        "files (checked by path and checksum)")
    parser.add_argument("--shard", type=_shard, metavar="K/N", help="run only shard K of N (K = 1..N): every N-th "
                        "case from the K-th; for SLURM arrays or several machines (see README)")
    parser.add_argument("--merge", action="store_true", help="do not segment: merge the N shard summaries in the "
                        "output folder into summary.csv, checking that every case is there exactly once")
    parser.add_argument("--no-overlap", action="store_true", help="one case at a time: do not read the next case "
                        "and write the previous one while the network runs (less memory: one case instead of three)")
    parser.add_argument("--devices", type=_devices, metavar="D,D,...", help="one worker per device, e.g. 0,1,2,3 "
                        "(GPU indices) or cpu,cpu; overrides --device")
    add_server_options(parser)
    add_segment_options(parser)


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 ≤ K ≤ N (e.g. 2/8), got {text!r}")
    return int(k), int(n)


def _devices(text: str) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    for item in items:
        index = item[5:] if item.startswith("cuda:") else item
        if not (item == "cpu" or index.isdigit()):
            raise argparse.ArgumentTypeError(f"devices are GPU indices or 'cpu' (e.g. 0,1 or cpu,cpu), got {item!r}")
    if not items:
        raise argparse.ArgumentTypeError("give at least one device")
    return ["cpu" if i == "cpu" else i.removeprefix("cuda:") for i in items]


def read_cases(source: str | Path, task) -> list[tuple[str, dict[str, str]]]:
    """(case id, {input name: path}) for every case of a datalist or case folder."""
    from LesionFactorizerLib.datalist import read_datalist
    from LesionFactorizerLib.core.tasks import is_image_file

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


def _is_plain(case_id: str) -> bool:
    return (bool(case_id) and not case_id.startswith(".") and not case_id.endswith((" ", "."))
            and len(case_id.encode("utf-8")) <= FOLDER_BYTES
            and not any(c in _FOLDER_UNSAFE or ord(c) < 32 or ord(c) == 127 for c in case_id)
            and not (case_id.lower().startswith("summary") and case_id.lower().endswith(".csv"))
            and case_id.split(".")[0].lower() not in _WINDOWS_DEVICES)


def case_folder(case_id: str) -> str:
    """The case's output folder name: the id when it is plain (short, no path or control characters,
    not hidden, not a name batch writes such as summary.csv), else a readable prefix of it with
    ``~`` and the first 12 hex digits of the id's SHA-256 (the same for every run and shard)."""
    if _is_plain(case_id):
        return case_id
    readable = "".join("_" if c in _FOLDER_UNSAFE or ord(c) < 32 or ord(c) == 127 else c for c in case_id)
    readable = readable.encode("utf-8")[:FOLDER_BYTES - 13].decode("utf-8", "ignore").strip(". ") or "case"
    return f"{readable}~{hashlib.sha256(case_id.encode('utf-8')).hexdigest()[:12]}"


def case_folders(case_ids: list[str]) -> list[str]:
    """Folder names of a whole list, refused when two would share a folder (also on file systems
    that ignore case)."""
    folders = [case_folder(c) for c in case_ids]
    seen: dict[str, str] = {}
    for case_id, folder in zip(case_ids, folders):
        other = seen.setdefault(folder.casefold(), case_id)
        if other != case_id:
            raise UserError(f"case ids {other!r} and {case_id!r} would share the output folder {folder!r} (names "
                            "that differ only in upper/lower case are one folder on Windows and macOS); rename one")
    return folders


@contextlib.contextmanager
def locked(out_root: Path, shard: tuple[int, int] | None = None, warn=None):
    """Hold the output folder against other batch runs for the block: a whole run or a merge holds
    it alone, a shard shares it with the other shards (each shard alone). An OS lock on a lock file:
    the kernel releases it when the process ends, however it ends. ``warn(message)``: said when the
    file system has no locks (some network shares)."""
    names = [(LOCK, shard is not None)]
    if shard is not None:
        names.append((f".lesion-factorizer-batch.shard-{shard[0]}-of-{shard[1]}.lock", False))
    files = []
    try:
        for name, shared in names:
            try:
                f = open(out_root / name, "a+b")
            except OSError as exc:
                raise UserError(f"cannot create the lock file in {out_root} ({exc.strerror}); choose a writable "
                                "output folder") from None
            files.append(f)
            held = _try_lock(f, shared)
            if held is None:
                if warn:
                    warn(f"the file system of {out_root} does not lock files: make sure no other batch run writes "
                         "into this folder at the same time")
                break
            if not held:
                what = f"shard {shard[0]}/{shard[1]}" if name != LOCK else "a batch"
                raise UserError(f"output folder {out_root} is in use by another `lesion-factorizer batch` run "
                                f"({what} into the same folder); wait for it to finish or choose another folder")
        yield
    finally:
        for f in files:
            f.close()   # closing releases the lock


def _try_lock(f, shared: bool) -> bool | None:
    """True: held; False: another process holds it; None: this file system has no locks."""
    import errno

    try:
        import fcntl
    except ImportError:   # Windows: exclusive locks only; the shards' shared hold is left out there
        import msvcrt

        if shared:
            return True
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise UserError(f"cannot lock {f.name} ({exc.strerror}); choose another output folder") from None


def _read_report(folder: Path) -> Report | None:
    """The report of an earlier run, or None when it is missing, unreadable or damaged (then the case
    is redone)."""
    try:
        return read_report(folder)
    except UserError:
        return None


def _summary_row(case_id: str, status: str, error: str, report: Report | None, task) -> dict:
    row = {"case_id": case_id, "folder": case_folder(case_id), "status": status, "error": error}
    if report:
        row["lesion_count"] = report.lesion_count
        for lb in task.labels:
            row[f"{lb.name}_ml"] = report.volumes_ml.get(lb.name)
        for name, volume in report.region_volumes_ml.items():
            row[f"{name}_ml"] = volume
        row["seconds"] = report.total_seconds
    return row


def _input_changes(report: Report, inputs: dict[str, str]) -> str:
    """Why an earlier result may not belong to this case's inputs ('' when it does)."""
    from LesionFactorizerLib.pipeline.filecheck import file_sha256

    for entry in report.input_files:
        name, path = entry.name, inputs.get(entry.name)
        if path is None:
            return f"input {name} is no longer listed"
        if os.path.abspath(path) != os.path.abspath(entry.path):
            return f"input {name} is now {path}, the result was made from {entry.path}"
        if not entry.sha256:
            return f"its report has no checksum of input {name} (made by an older version)"
        try:
            if file_sha256(path) != entry.sha256:
                return f"input {name} ({path}) changed since the result was made"
        except OSError as exc:
            return f"input {name} ({path}) cannot be read ({exc.strerror})"
    return ""


def _write_summary(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _summary_name(shard: tuple[int, int] | None) -> str:
    return SUMMARY if shard is None else f"summary.shard-{shard[0]}-of-{shard[1]}.csv"


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.pipeline.progress import Progress, terminate_cleanly

    terminate_cleanly()
    progress = Progress(args.progress)
    with progress.errors_reported():
        if args.merge:
            return _merge(args, progress)
        return _run(args, progress)


def _task_and_models(args: argparse.Namespace):
    from LesionFactorizerLib.modelfile import default_model, find_model, read_metadata
    from LesionFactorizerLib.core.tasks import get_task

    if getattr(args, "server", None):   # the server finds the models by name
        if not args.task:
            raise UserError("with --server give --task (the server finds the models by name)")
        return get_task(args.task), list(args.models)
    if args.models:
        paths = [find_model(m) for m in args.models]
    elif args.task:
        paths = [default_model(get_task(args.task).name)]
    else:
        raise UserError("give --task or --model")
    return get_task(args.task or read_metadata(paths[0])["task"]), paths


def _check_devices(devices: list[str]) -> None:
    """Every GPU index must exist (asked without starting CUDA in this process)."""
    gpus = [int(d) for d in devices if d != "cpu"]
    if gpus:
        import torch

        count = torch.cuda.device_count()
        missing = [g for g in gpus if g >= count]
        if missing:
            raise UserError(f"--devices: there is no GPU {missing[0]} (torch sees {count} CUDA GPU(s)); give "
                            f"indices below {count}, or cpu")


def _run(args: argparse.Namespace, progress) -> int:
    task, paths = _task_and_models(args)
    if args.devices and not args.server:
        _check_devices(args.devices)
    cases = read_cases(args.source, task)
    total_cases = len(cases)
    folders = case_folders([c for c, _ in cases])   # the whole list: every shard maps ids alike
    if args.shard:
        k, n = args.shard
        cases, folders = cases[k - 1::n], folders[k - 1::n]
    out_root = Path(args.output)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {out_root} ({exc.strerror})") from None
    with locked(out_root, args.shard, progress.warning):
        return _run_locked(args, progress, task, paths, cases, folders, total_cases, out_root)


def _run_locked(args, progress, task, paths, cases, folders, total_cases, out_root: Path) -> int:
    rows: list[dict | None] = [None] * len(cases)
    todo = []
    finished = 0
    for index, (case_id, inputs) in enumerate(cases):
        case_out = out_root / folders[index]
        redo = False
        if args.resume and (case_out / REPORT_NAME).is_file():
            report = _read_report(case_out)
            why = (f"its {REPORT_NAME} is unreadable or damaged" if report is None
                   else _input_changes(report, inputs) or _incomplete(case_out))
            if not why:
                rows[index] = _summary_row(case_id, "skipped", "", report, task)
                finished += 1
                progress.case_done(case_id, "skipped", "", 0.0, finished, len(cases))
                continue
            progress.warning(f"{case_id}: the earlier result is not reused ({why}); segmenting again")
            redo = True   # the folder holds our earlier outputs for this case id
        todo.append((index, case_id, inputs, str(case_out), redo))

    latencies: list[float] = []

    def record(index: int, status: str, error: str, seconds: float) -> None:
        nonlocal finished
        case_id = cases[index][0]
        report = _read_report(out_root / folders[index]) if status == "done" else None
        rows[index] = _summary_row(case_id, status, error, report, task)
        if status == "done":
            latencies.append(seconds)
        finished += 1
        progress.case_done(case_id, status, error, seconds, finished, len(cases))

    t0 = time.monotonic()
    if args.devices and not args.server:
        _run_on_devices(args, task.name, paths, todo, record)
    elif args.server:
        from LesionFactorizerLib.serve.remote_batch import ServerCaseRunner

        worker = ServerCaseRunner(args, task.name)
        for index, case_id, inputs, output, redo in todo:
            record(index, *worker.run(case_id, inputs, output, redo))
    else:
        from LesionFactorizerLib.cli.batch_pipeline import CasePipeline

        CasePipeline(lambda: _segmenter(args, task.name, paths, args.device), args.overwrite,
                     overlap=not args.no_overlap).run(todo, record)
    throughput = _throughput(latencies, time.monotonic() - t0)
    summary = out_root / _summary_name(args.shard)
    _write_summary(summary, rows)
    failed = [r for r in rows if r["status"] == "failed"]
    unexpected = [r for r in failed if str(r["error"]).startswith("unexpected")]
    shard = f" (shard {args.shard[0]}/{args.shard[1]} of {total_cases} cases)" if args.shard else ""
    message = (f"{len(rows) - len(failed)} of {len(rows)} case(s) segmented{shard}, {len(failed)} failed"
               f"{throughput}; summary: {summary}")
    progress.done({"summary": str(summary), FOLDER_KEY: str(out_root)}, message)
    if args.progress != "jsonl":
        print(message, file=sys.stderr)
    if failed:
        return 1 if unexpected else 2
    return 0


def _throughput(latencies: list[float], wall: float) -> str:
    """Cases segmented per hour of this run's wall time, and each case's latency (from the start of
    its reading to its committed outputs); '' when no case was segmented."""
    if not latencies:
        return ""
    from statistics import median

    return (f" ({len(latencies)} in {wall:.1f} s: {3600 * len(latencies) / max(wall, 1e-9):.1f} cases/hour; "
            f"latency per case median {median(latencies):.1f} s, max {max(latencies):.1f} s)")


def _segmenter(args: argparse.Namespace, task: str, paths: list, device: str):
    """The cohort's one Segmenter (its models load on the first case)."""
    from LesionFactorizerLib.pipeline.segment import Segmenter
    from LesionFactorizerLib.core.settings import SegmentSettings

    return Segmenter(SegmentSettings.from_args(args).but(task=task, device=device, models=[str(p) for p in paths]))


class _CaseRunner:
    """Segments cases one after the other with models loaded once (in this process or a worker)."""

    def __init__(self, args: argparse.Namespace, task: str, paths: list, device: str):
        self.args, self.task, self.paths, self.device = args, task, paths, device
        self.segmenter = None

    def run(self, case_id: str, inputs: dict[str, str], output: str, redo: bool) -> tuple[str, str, float]:
        from LesionFactorizerLib.pipeline.progress import Progress

        t0 = time.monotonic()
        try:
            if self.segmenter is None:   # one Segmenter for the cohort: the models load once
                self.segmenter = _segmenter(self.args, self.task, self.paths, self.device)
            self.segmenter.segment(inputs, output, self.args.overwrite or redo, Progress("none"))
            return "done", "", time.monotonic() - t0
        except UserError as exc:
            return "failed", str(exc), time.monotonic() - t0
        except Exception as exc:  # one broken case must not stop the cohort
            return "failed", f"unexpected: {type(exc).__name__}: {exc}", time.monotonic() - t0


def _run_on_devices(args, task: str, paths: list, todo: list, record) -> None:
    """One worker process per device; each takes the next case from a shared queue."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")   # no forked copies of torch state; CUDA needs a fresh process
    tasks, results = ctx.Queue(), ctx.Queue()
    for item in todo:
        tasks.put(item)
    worker_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith("_")})
    workers = [ctx.Process(target=_device_worker, args=(device, worker_args, task, [str(p) for p in paths],
                                                         tasks, results), daemon=True)
               for device in args.devices]
    for w in workers:
        tasks.put(None)   # one stop mark per worker
    try:
        for w in workers:
            w.start()
        pending = len(todo)
        while pending:
            try:
                index, status, error, seconds = results.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [w for w in workers if not w.is_alive() and w.exitcode not in (0, None)]
                if dead and all(not w.is_alive() for w in workers):
                    raise UserError(f"every device worker stopped (exit codes {[w.exitcode for w in workers]}) "
                                    f"with {pending} case(s) left; run again with --resume") from None
                continue
            record(index, status, error, seconds)
            pending -= 1
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()   # SIGTERM: the worker removes its temporary outputs on the way out
        for w in workers:
            w.join(timeout=30)


def _device_worker(device: str, args: argparse.Namespace, task: str, paths: list, tasks, results) -> None:
    if device != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = device   # before torch starts: this GPU becomes cuda:0
    from LesionFactorizerLib.pipeline.progress import terminate_cleanly

    terminate_cleanly()
    runner = _CaseRunner(args, task, paths, "cpu" if device == "cpu" else "cuda")
    while True:
        item = tasks.get()
        if item is None:
            return
        index, case_id, inputs, output, redo = item
        results.put((index, *runner.run(case_id, inputs, output, redo)))


def _merge(args: argparse.Namespace, progress) -> int:
    """summary.csv from the shard summaries in the output folder, in list order, each case once."""
    out_root = Path(args.output)
    if not out_root.is_dir():
        raise UserError(f"{out_root} is not a folder; give the output folder of the shards")
    with locked(out_root, warn=progress.warning):   # no shard may still be writing
        return _merge_locked(args, progress, out_root)


def _merge_locked(args: argparse.Namespace, progress, out_root: Path) -> int:
    found = {}
    for path in sorted(out_root.glob("summary.shard-*-of-*.csv")):
        m = re.fullmatch(r"summary\.shard-(\d+)-of-(\d+)\.csv", path.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = path
    if not found:
        raise UserError(f"{out_root} holds no shard summaries (summary.shard-K-of-N.csv); run the shards first")
    counts = sorted({n for _, n in found})
    if len(counts) != 1:
        raise UserError(f"{out_root} holds summaries of different shardings (N = {', '.join(map(str, counts))}); "
                        "remove the stale ones")
    n = counts[0]
    missing = [k for k in range(1, n + 1) if (k, n) not in found]
    if missing:
        raise UserError(f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} have no summary in {out_root}; run them "
                        "(with --resume to reuse finished cases) before merging")
    rows: dict[str, dict] = {}
    for (k, _), path in sorted(found.items()):
        for row in _read_shard_summary(path, out_root, f"run shard {k}/{n} again (with --resume to keep its "
                                                       "finished cases)"):
            if row["case_id"] in rows:
                raise UserError(f"case {row['case_id']} is in more than one shard summary; merge needs a "
                                "disjoint split")
            rows[row["case_id"]] = row
    task, _ = _task_and_models(args)
    listed = [case_id for case_id, _ in read_cases(args.source, task)]
    absent = [c for c in listed if c not in rows]
    extra = [c for c in rows if c not in listed]
    if absent or extra:
        detail = (f"{len(absent)} listed case(s) have no result (e.g. {', '.join(absent[:3])})" if absent
                  else f"{len(extra)} result(s) are not in the list (e.g. {', '.join(extra[:3])})")
        raise UserError(f"the shard summaries do not match {args.source}: {detail}; run the shards with the same "
                        "list")
    merged = [rows[c] for c in listed]
    summary = out_root / SUMMARY
    _write_summary(summary, merged)
    failed = sum(r["status"] == "failed" for r in merged)
    message = f"merged {n} shard(s): {len(merged) - failed} of {len(merged)} case(s) segmented, {failed} failed; " \
              f"summary: {summary}"
    progress.done({"summary": str(summary), FOLDER_KEY: str(out_root)}, message)
    if args.progress != "jsonl":
        print(message, file=sys.stderr)
    return 2 if failed else 0


def _read_shard_summary(path: Path, out_root: Path, remedy: str) -> list[dict]:
    """The rows of one shard summary, each checked: the columns merge relies on, a known status, the
    case's folder as :func:`case_folder` names it, and a complete result for every finished case."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:   # -sig: also after a save from Excel
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} cannot be read as a summary ({exc}); {remedy}") from None
    lacking = [c for c in SUMMARY_COLUMNS if c not in columns]
    if lacking:
        raise UserError(f"{path} lacks the column(s) {', '.join(lacking)} (damaged, or written by an older version); "
                        f"{remedy}")
    for line, row in enumerate(rows, start=2):
        case_id, status = row["case_id"], row["status"]
        if None in row or any(row[c] is None for c in SUMMARY_COLUMNS) or not case_id or status not in STATUSES:
            raise UserError(f"{path} line {line} is not a case row (its cells do not match the header, or status "
                            f"{status!r} is not one of {', '.join(STATUSES)}); {remedy}")
        if row["folder"] != case_folder(case_id):
            raise UserError(f"{path} line {line}: case {case_id} is in folder {case_folder(case_id)!r}, not "
                            f"{row['folder']!r}; {remedy}")
        why = _incomplete(out_root / row["folder"]) if status != "failed" else ""
        if why:
            raise UserError(f"case {case_id} is {status} in {path.name}, but its result is incomplete ({why}); "
                            f"{remedy}")
    return rows


def _incomplete(folder: Path) -> str:
    """Why ``folder`` holds no complete result ('' when it does: a valid report.json and every output
    it lists)."""
    from LesionFactorizerLib.pipeline.report import read_run_report

    try:
        lost = read_run_report(folder).missing_outputs()
    except UserError as exc:
        return str(exc)
    return f"{folder} lacks {', '.join(lost[:3])}" if lost else ""
