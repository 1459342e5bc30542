"""Dataset adapters: the layouts users download → a list of :class:`Case` for one task.

Each adapter knows where a layout keeps every input and the label file, and how its label values
map onto the task's canonical labels (DESIGN.md §1: tumor 1 NCR, 2 ED, 3 ET; stroke and ms-new
1 lesion). The conversion is explicit per layout because the public releases disagree:

=================  ==============================  =======================================
layout             raw labels                      task labels
=================  ==============================  =======================================
MSD Task01         1 ED, 2 NCR/NET, 3 ET           ED→2, NCR→1, ET→3
BraTS 2020/2021    1 NCR, 2 ED, 4 ET               1→1, 2→2, 4→3
BraTS 2023+        1 NCR, 2 ED, 3 ET               identity
ISLES'22           0/1 mask                        >0 → 1
MSSEG-2            0/1 consensus                   >0 → 1
datalist           as given by ``label_map``       identity if not given
=================  ==============================  =======================================

A label value outside the layout's table is an error naming the file (a BraTS 2023 file read as
BraTS 2021 would otherwise silently lose its enhancing tumour).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.tasks import get_task

BINARY = "binary"   # label_map sentinel: every non-zero value → 1


@dataclass(frozen=True)
class ImageRef:
    path: str
    channel: int | None = None   # index into a 4-D (multi-channel) file, e.g. MSD Task01


@dataclass
class Case:
    id: str
    images: dict[str, ImageRef]            # task input name → file
    label: str | None
    label_map: dict[int, int] | str = field(default_factory=dict)  # raw → task, or BINARY
    fold: int | None = None


def convert_labels(raw: np.ndarray, label_map: dict[int, int] | str, source: str = "label") -> np.ndarray:
    """Map raw label values onto task labels; unknown non-zero values are an error."""
    raw = np.asarray(raw)
    if isinstance(label_map, str):
        if label_map != BINARY:
            raise ValueError(f"unknown label map {label_map!r}")
        return (raw > 0).astype(np.uint8)
    if not label_map:
        return raw.astype(np.uint8)
    values = np.unique(raw)
    unknown = [int(v) for v in values if v != 0 and int(v) not in label_map]
    if unknown:
        raise UserError(f"{source}: label value(s) {unknown} are not in this layout's labels "
                        f"{sorted(label_map)}; check the data format (e.g. BraTS 2021 uses 4 for ET, "
                        "BraTS 2023 uses 3)")
    lut = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.uint8)
    for k, v in label_map.items():
        if k < lut.size:
            lut[k] = v
    return lut[raw.astype(np.int64)]


def _require_dir(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise UserError(f"{what} folder {root} does not exist; point data.root (or --data-root) at the "
                        "downloaded data set")
    return root


# --- Medical Segmentation Decathlon Task01 ---------------------------------------------------
MSD_TASK01_LABELS = {1: 2, 2: 1, 3: 3}
_MSD_MODALITY_TO_INPUT = {"flair": "flair", "t1w": "t1", "t1gd": "t1ce", "t2w": "t2"}


def msd_task01(root: Path, task: str) -> list[Case]:
    js = root / "dataset.json"
    if not js.is_file():
        raise UserError(f"{js} not found; data.root must be the Task01_BrainTumour folder with dataset.json")
    meta = json.loads(js.read_text(encoding="utf-8"))
    modality = {int(k): str(v).lower() for k, v in meta.get("modality", {}).items()} or \
        {0: "flair", 1: "t1w", 2: "t1gd", 3: "t2w"}
    channels = {}
    for idx, mod in modality.items():
        if mod not in _MSD_MODALITY_TO_INPUT:
            raise UserError(f"{js}: unexpected modality {mod!r}; expected FLAIR, T1w, t1gd, T2w")
        channels[_MSD_MODALITY_TO_INPUT[mod]] = idx
    labels = {int(k): str(v).lower() for k, v in meta.get("labels", {}).items()}
    if labels and not ("edema" in labels.get(1, "") and "enhancing" in labels.get(3, "")):
        raise UserError(f"{js}: labels {labels} are not the MSD Task01 convention (1 edema, 2 non-enhancing, "
                        "3 enhancing); use data.format: datalist with an explicit label_map")
    _check_task_inputs(task, channels, "msd-task01")
    cases = []
    for item in meta.get("training", []):
        img = (root / item["image"]).resolve()
        lab = (root / item["label"]).resolve()
        cid = re.sub(r"\.nii(\.gz)?$", "", img.name)
        cases.append(Case(cid, {n: ImageRef(str(img), c) for n, c in channels.items()}, str(lab), MSD_TASK01_LABELS))
    if not cases:
        raise UserError(f"{js} lists no 'training' cases")
    return cases


# --- BraTS 2020/2021 and 2023+ folder layouts --------------------------------------------------
BRATS_2021_LABELS = {1: 1, 2: 2, 4: 3}
BRATS_2023_LABELS = {1: 1, 2: 2, 3: 3}
_BRATS_2021_SUFFIX = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
_BRATS_2023_SUFFIX = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}


def _find(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def brats(root: Path, task: str) -> list[Case]:
    _require_dir(root, "BraTS")
    _check_task_inputs(task, _BRATS_2021_SUFFIX, "brats")
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for sep, suffixes, labels in (("_", _BRATS_2021_SUFFIX, BRATS_2021_LABELS),
                                      ("-", _BRATS_2023_SUFFIX, BRATS_2023_LABELS)):
            files = {n: _find(d, f"{d.name}{sep}{s}") for n, s in suffixes.items()}
            if all(files.values()):
                seg = _find(d, f"{d.name}{sep}seg")
                cases.append(Case(d.name, {n: ImageRef(str(p)) for n, p in files.items()},
                                  str(seg) if seg else None, labels))
                break
    if not cases:
        raise UserError(f"no BraTS cases in {root}: expected sub-folders CASE/CASE_flair.nii.gz … (2020/2021) "
                        "or CASE/CASE-t2f.nii.gz … (2023+)")
    return cases


# --- ISLES'22 (BIDS) -----------------------------------------------------------------------------
def isles22(root: Path, task: str) -> list[Case]:
    raw = _require_dir(root / "rawdata", "ISLES'22 rawdata")
    wanted = get_task(task).input_names
    cases = []
    for sub in sorted(p for p in raw.iterdir() if p.is_dir() and p.name.startswith("sub-")):
        for ses in sorted(p for p in sub.iterdir() if p.is_dir() and p.name.startswith("ses-")):
            stem = f"{sub.name}_{ses.name}"
            files = {"dwi": _find(ses / "dwi", f"{stem}_dwi"), "adc": _find(ses / "dwi", f"{stem}_adc"),
                     "flair": _find(ses / "anat", f"{stem}_FLAIR")}
            images = {n: ImageRef(str(files[n])) for n in wanted if files.get(n)}
            missing = [n for n in get_task(task).required_inputs if n not in images]
            if missing:
                raise UserError(f"ISLES'22 case {stem}: missing {missing} under {ses}")
            msk = _find(root / "derivatives" / sub.name / ses.name, f"{stem}_msk")
            cid = sub.name if len(list(sub.iterdir())) == 1 else stem
            cases.append(Case(cid, images, str(msk) if msk else None, BINARY))
    if not cases:
        raise UserError(f"no ISLES'22 cases in {raw}: expected rawdata/sub-*/ses-*/dwi/*_dwi.nii.gz")
    return cases


# --- MSSEG-2 ---------------------------------------------------------------------------------------
def msseg2(root: Path, task: str) -> list[Case]:
    _require_dir(root, "MSSEG-2")
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        t1, t2 = _find(d, "flair_time01_on_middle_space"), _find(d, "flair_time02_on_middle_space")
        if t1 and t2:
            gt = _find(d, "ground_truth")
            cases.append(Case(d.name, {"flair_baseline": ImageRef(str(t1)), "flair_followup": ImageRef(str(t2))},
                              str(gt) if gt else None, BINARY))
    if not cases:
        raise UserError(f"no MSSEG-2 cases in {root}: expected CASE/flair_time01_on_middle_space.nii.gz, "
                        "flair_time02_on_middle_space.nii.gz and ground_truth.nii.gz")
    _check_task_inputs(task, cases[0].images, "msseg2")
    return cases


# --- generic datalist (JSON or CSV) ---------------------------------------------------------------
def datalist(path: Path, task: str, label_map: dict | None = None) -> list[Case]:
    """JSON: a list (or ``{"training": [...]}``) of objects; CSV: a header row. Each entry has
    ``id``, one key per task input name, ``label`` and optionally ``fold``. Relative paths are
    relative to the datalist's folder."""
    if not path.is_file():
        raise UserError(f"datalist {path} not found; set data.root to a .json or .csv file")
    if path.suffix.lower() == ".json":
        items = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(items, dict):
            items = items.get("training", items.get("cases"))
        if not isinstance(items, list):
            raise UserError(f"{path}: expected a list of cases or {{'training': [...]}}")
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            items = list(csv.DictReader(f))
    else:
        raise UserError(f"datalist {path} must be .json or .csv")
    t = get_task(task)
    mapping = {int(k): int(v) for k, v in (label_map or {}).items()}
    cases = []
    for n, item in enumerate(items):
        missing = [i for i in t.required_inputs if not item.get(i)]
        if missing:
            raise UserError(f"{path}: entry {n} lacks input(s) {missing}; columns must be "
                            f"id, {', '.join(t.input_names)}, label[, fold]")
        rel = lambda p: str((path.parent / p).resolve()) if p else None  # noqa: E731
        fold = item.get("fold")
        cases.append(Case(str(item.get("id") or f"case{n:04d}"),
                          {i: ImageRef(rel(item[i])) for i in t.input_names if item.get(i)},
                          rel(item.get("label")), mapping, int(fold) if fold not in (None, "") else None))
    if not cases:
        raise UserError(f"datalist {path} is empty")
    return cases


def _check_task_inputs(task: str, provided, layout: str) -> None:
    t = get_task(task)
    missing = [n for n in t.required_inputs if n not in provided]
    if missing:
        raise UserError(f"the {layout} layout does not provide {missing} needed by task {task!r}; "
                        "pick the matching task or a datalist")


ADAPTERS = {"msd-task01": msd_task01, "brats": brats, "isles22": isles22, "msseg2": msseg2}


def discover(fmt: str, root: str | Path, task: str, label_map: dict | None = None,
             require_labels: bool = True) -> list[Case]:
    """All cases of a data set, in a stable order (the order k-fold splitting depends on)."""
    root = Path(root).expanduser()
    if fmt == "datalist":
        cases = datalist(root, task, label_map)
    elif fmt in ADAPTERS:
        cases = ADAPTERS[fmt](root, task)
    else:
        raise UserError(f"unknown data format {fmt!r}; use {', '.join(list(ADAPTERS) + ['datalist'])}")
    if require_labels:
        unlabeled = [c.id for c in cases if not c.label]
        if unlabeled:
            raise UserError(f"{len(unlabeled)} case(s) have no label file (first: {unlabeled[0]}); "
                            "training needs a label for every case")
    for c in cases:
        for name, ref in c.images.items():
            if not Path(ref.path).is_file():
                raise UserError(f"case {c.id}: input {name} file {ref.path} does not exist")
    return cases
