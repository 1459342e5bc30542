"""One reader for datalists — the CSV/TSV/JSON files that list a cohort's cases — for every command
that takes one (``batch`` for inference, ``train``/``cv``/``evaluate`` through
:mod:`LesionFactorizerLib.datasets`).

Accepted spellings (both historical formats of this project, so a list written for one command
works for the others):

- **CSV / TSV**: a header row; the case id column is ``case_id``, ``case``, ``id`` or ``subject``
  (optional: missing ids become ``case0001``, …); one column per task input name; optional
  ``label`` and ``fold`` columns.
- **JSON**: a list of objects, or an object holding that list under ``cases``, ``training`` or
  ``data``. Each object has an id key as above and either an ``inputs`` object
  (``{name: path}``) or one key per input name; optional ``label`` and ``fold``.

Relative paths are relative to the datalist's folder. Columns/keys that are neither an id, an
input of the task, ``label`` nor ``fold`` are kept in :attr:`Entry.extra` (a cohort table may
carry age, scanner, …) so callers can decide whether to warn. Pure Python: no torch, no SimpleITK.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from LesionFactorizerLib.core.errors import UserError

ID_KEYS = ("case_id", "case", "id", "subject")
LIST_KEYS = ("cases", "training", "data")
SUFFIXES = (".csv", ".tsv", ".json")


@dataclass
class Entry:
    """One case of a datalist; paths are absolute."""

    id: str
    inputs: dict[str, str]
    label: str | None = None
    fold: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    text = _text(path)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"datalist {path} is not valid JSON ({exc}); fix the syntax") from None
        if isinstance(data, dict):
            data = next((data[k] for k in LIST_KEYS if k in data), None)
        if not isinstance(data, list):
            raise UserError(f"datalist {path} must hold a list of cases (or {{'cases': [...]}})")
        for n, item in enumerate(data):
            if not isinstance(item, dict):
                raise UserError(f"datalist {path}: entry {n} is not an object; every case must be "
                                "{\"case_id\": ..., \"<input>\": path, ...}")
        return data
    if suffix in (".csv", ".tsv"):
        lines = text.splitlines(keepends=True)
        first = lines[0] if lines else ""
        # Excel writes ';' in locales whose decimal mark is ','
        delimiter = "\t" if suffix == ".tsv" else (";" if ";" in first and "," not in first else ",")
        rows = list(csv.DictReader(lines, delimiter=delimiter))
        return [{(k.strip() if isinstance(k, str) else k): v for k, v in row.items()} for row in rows]
    raise UserError(f"datalist {path} must be a .csv, .tsv or .json file")


def _text(path: Path) -> str:
    """The datalist's text. Spreadsheet programs add a byte-order mark (Excel's "CSV UTF-8") or
    write UTF-16 ("Unicode text"); read as plain UTF-8 the BOM would become part of the first
    column's name and the case ids would silently be lost."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read datalist {path} ({exc.strerror})") from None
    try:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            return raw.decode("utf-16")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"datalist {path} is not UTF-8 text; save it as UTF-8 (in Excel: 'CSV UTF-8')") from None


def check_case_id(case_id: str, where: str) -> str:
    """Case ids name output folders and cache files: no path separators, not ``.``/``..``."""
    if case_id in (".", "..") or any(c in case_id for c in "/\\\0") or case_id != case_id.strip():
        raise UserError(f"{where}: case id {case_id!r} cannot be used as a folder name; use letters, digits, "
                        "'-', '_' or '.' without path separators")
    return case_id


def read_datalist(path: str | Path, input_names: Iterable[str], required: Iterable[str] = ()) -> list[Entry]:
    """Every entry of a datalist, in file order (k-fold splitting depends on that order).

    ``required`` inputs missing from an entry are an error naming the entry; callers that report
    missing inputs per case (``batch``) pass none."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"datalist {path} not found; give a .csv, .tsv or .json file")
    names, required = list(input_names), list(required)
    base = path.parent

    def resolve(value) -> str:
        p = Path(str(value)).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    entries: list[Entry] = []
    for n, row in enumerate(_rows(path)):
        where = f"{path}: entry {n + 1}"
        id_key = next((k for k in ID_KEYS if k in row), None)
        raw_id = row.get(id_key) if id_key else None
        case_id = check_case_id(str(raw_id).strip() if raw_id not in (None, "") else f"case{n + 1:04d}", where)
        nested = row.get("inputs")
        if nested is not None and not isinstance(nested, dict):
            raise UserError(f"{where}: 'inputs' must be an object {{name: path}}")
        source = nested if nested is not None else row
        inputs = {k: resolve(v) for k, v in source.items() if k in names and v not in (None, "")}
        unknown_nested = sorted(k for k in (nested or {}) if k not in names)
        if unknown_nested:
            raise UserError(f"{where}: unknown input name(s) {', '.join(unknown_nested)}; the inputs are "
                            f"{', '.join(names)}")
        missing = [i for i in required if i not in inputs]
        if missing:
            raise UserError(f"{where} lacks input(s) {missing}; columns must be "
                            f"case_id, {', '.join(names)}, label[, fold]")
        fold = row.get("fold")
        if fold not in (None, ""):
            try:
                fold = int(fold)
            except (TypeError, ValueError):
                raise UserError(f"{where}: fold {fold!r} is not a whole number") from None
        else:
            fold = None
        label = row.get("label")
        known = set(names) | {"inputs", "label", "fold"} | ({id_key} if id_key else set())
        extra = {k: str(v) for k, v in row.items() if k not in known and k is not None}
        entries.append(Entry(case_id, inputs, resolve(label) if label not in (None, "") else None, fold, extra))
    if not entries:
        raise UserError(f"datalist {path} lists no cases")
    ids = [e.id for e in entries]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise UserError(f"duplicate case ids in {path}: {', '.join(dupes[:5])}; every case needs its own id")
    return entries
