"""Public data-set layouts → a list of :class:`Case` for one task, and their label conversion.

Used by training (``train``/``cv``), by ``evaluate --ref-format`` and, for the file naming and
raw label values, by the phantom writer — so synthetic data sets are read by exactly the code
that reads the real ones. Torch-free (numpy; SimpleITK only inside :func:`read_image_ref`).

Each adapter knows where a layout keeps every input and the label file, and how its label values
map onto the task's canonical labels (`core/tasks.py`: tumor 1 NCR, 2 ED, 3 ET; stroke and ms-new
1 lesion). The conversion is explicit per layout because the public releases disagree:

=================  ==============================  =======================================
layout             raw labels                      task labels
=================  ==============================  =======================================
MSD Task01         1 ED, 2 NCR/NET, 3 ET           ED→2, NCR→1, ET→3
BraTS 2020/2021    1 NCR, 2 ED, 4 ET               1→1, 2→2, 4→3
BraTS 2023+        1 NCR, 2 ED, 3 ET               identity
ISLES'22           0/1 mask                        >0 → 1
MSSEG-2            0/1 consensus                   >0 → 1
datalist           as given by ``label_map``       the task's own values if not given
=================  ==============================  =======================================

A label value outside the layout's table is an error naming the file (a BraTS 2021 file read
with the task's own values would otherwise silently lose its enhancing tumour, 4).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from LesionFactorizerLib.datalist import read_datalist
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.tasks import get_task

BINARY = "binary"   # label_map sentinel: every non-zero value → 1
NIFTI_ENDINGS = (".nii.gz", ".nii")   # the public releases ship NIfTI only


@dataclass(frozen=True)
class ImageRef:
    path: str
    channel: int | None = None   # index into a 4-D (multi-channel) file, e.g. MSD Task01


@dataclass
class Case:
    id: str
    images: dict[str, ImageRef]            # task input name → file
    label: str | None
    label_map: dict[int, int] | str        # raw → task, or BINARY; never empty (see task_label_map)
    fold: int | None = None


# --- label tables --------------------------------------------------------------------------------
MSD_TASK01_LABELS = {1: 2, 2: 1, 3: 3}
BRATS_2021_LABELS = {1: 1, 2: 2, 4: 3}   # BraTS 2020/2021 store enhancing tumour as 4
BRATS_2023_LABELS = {1: 1, 2: 2, 3: 3}


def task_label_map(task: str) -> dict[int, int]:
    """Identity over the task's label values: what a datalist without ``label_map`` means, so a
    value the task does not know (BraTS-2021's 4) is refused instead of passed through."""
    return {spec.value: spec.value for spec in get_task(task).labels}


def raw_labels(labels: np.ndarray, label_map: dict[int, int] | str) -> np.ndarray:
    """Task labels → a layout's raw values (the inverse of :func:`convert_labels`), for writers."""
    labels = np.asarray(labels)
    if isinstance(label_map, str):
        return (labels > 0).astype(labels.dtype)
    out = np.zeros_like(labels)
    for raw, task_value in label_map.items():
        out[labels == task_value] = raw
    return out


def convert_labels(raw: np.ndarray, label_map: dict[int, int] | str, source: str = "label") -> np.ndarray:
    """Map raw label values onto task labels; every non-zero value must be in ``label_map``."""
    raw = np.asarray(raw)
    if isinstance(label_map, str):
        if label_map != BINARY:
            raise ValueError(f"unknown label map {label_map!r}")
        return (raw > 0).astype(np.uint8)
    if not label_map:
        raise ValueError("convert_labels needs a label map; use task_label_map(task) for the task's own values")
    values = np.unique(raw)
    unknown = [int(v) if v == np.round(v) else float(v) for v in values
               if v != 0 and (v != np.round(v) or int(v) not in label_map)]
    if unknown:
        raise UserError(f"{source}: label value(s) {unknown} are not among the expected label values "
                        f"{sorted(label_map)}; check the data format (BraTS 2020/2021 store ET as 4, BraTS 2023 "
                        "as 3; masks must be 0/1) or give a label map (data.label_map for a datalist)")
    lut = np.zeros(int(max(values.max(), max(label_map))) + 1 if values.size else 1, dtype=np.uint8)
    for k, v in label_map.items():
        lut[k] = v
    return lut[raw.astype(np.int64)]


# --- file naming of the public layouts (stems: no extension; relative to the data-set root) -----
@dataclass(frozen=True)
class BratsRelease:
    name: str
    sep: str                       # between case id and suffix
    suffixes: dict[str, str]       # task input name → file suffix
    labels: dict[int, int]


BRATS_2021 = BratsRelease("2020/2021", "_", {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"},
                          BRATS_2021_LABELS)
BRATS_2023 = BratsRelease("2023+", "-", {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"},
                          BRATS_2023_LABELS)


def brats_files(case: str, release: BratsRelease = BRATS_2021) -> dict[str, str]:
    """``CASE/CASE_flair`` …, ``CASE/CASE_seg`` (key ``label``)."""
    files = {n: f"{case}/{case}{release.sep}{s}" for n, s in release.suffixes.items()}
    files["label"] = f"{case}/{case}{release.sep}seg"
    return files


def isles22_files(subject: str, session: str = "ses-0001") -> dict[str, str]:
    """ISLES'22 BIDS: raw images under ``rawdata/``, the expert mask under ``derivatives/``."""
    stem = f"{subject}_{session}"
    raw = f"rawdata/{subject}/{session}"
    return {"dwi": f"{raw}/dwi/{stem}_dwi", "adc": f"{raw}/dwi/{stem}_adc", "flair": f"{raw}/anat/{stem}_FLAIR",
            "label": f"derivatives/{subject}/{session}/{stem}_msk"}


def msseg2_files(case: str) -> dict[str, str]:
    return {"flair_baseline": f"{case}/flair_time01_on_middle_space",
            "flair_followup": f"{case}/flair_time02_on_middle_space", "label": f"{case}/ground_truth"}


# the public layout whose conventions each task's phantoms follow (read back with that adapter)
PHANTOM_LAYOUT = {"tumor": "brats", "stroke": "isles22", "ms-new": "msseg2"}
PHANTOM_LABELS: dict[str, dict[int, int] | str] = {"tumor": BRATS_2021_LABELS, "stroke": BINARY, "ms-new": BINARY}


def _find(root: Path, stem: str) -> Path | None:
    for ext in NIFTI_ENDINGS:
        p = root / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _require_dir(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise UserError(f"{what} folder {root} does not exist; point data.root (or --data-root) at the "
                        "downloaded data set")
    return root


# --- Medical Segmentation Decathlon Task01 ---------------------------------------------------------
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


# --- BraTS 2020/2021 and 2023+ folder layouts ------------------------------------------------------
def brats(root: Path, task: str) -> list[Case]:
    _require_dir(root, "BraTS")
    _check_task_inputs(task, BRATS_2021.suffixes, "brats")
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for release in (BRATS_2021, BRATS_2023):
            stems = brats_files(d.name, release)
            files = {n: _find(root, stems[n]) for n in release.suffixes}
            if all(files.values()):
                seg = _find(root, stems["label"])
                cases.append(Case(d.name, {n: ImageRef(str(p)) for n, p in files.items()},
                                  str(seg) if seg else None, release.labels))
                break
    if not cases:
        raise UserError(f"no BraTS cases in {root}: expected sub-folders CASE/CASE_flair.nii.gz … (2020/2021) "
                        "or CASE/CASE-t2f.nii.gz … (2023+)")
    return cases


# --- ISLES'22 (BIDS) -------------------------------------------------------------------------------
def isles22(root: Path, task: str) -> list[Case]:
    raw = _require_dir(root / "rawdata", "ISLES'22 rawdata")
    t = get_task(task)
    _check_task_inputs(task, isles22_files("sub"), "isles22")
    cases = []
    for sub in sorted(p for p in raw.iterdir() if p.is_dir() and p.name.startswith("sub-")):
        sessions = sorted(p for p in sub.iterdir() if p.is_dir() and p.name.startswith("ses-"))
        for ses in sessions:
            stems = isles22_files(sub.name, ses.name)
            files = {n: _find(root, stems[n]) for n in t.input_names}
            images = {n: ImageRef(str(p)) for n, p in files.items() if p}
            missing = [n for n in t.required_inputs if n not in images]
            if missing:
                raise UserError(f"ISLES'22 case {sub.name}_{ses.name}: missing {missing} under {ses}")
            msk = _find(root, stems["label"])
            cid = sub.name if len(sessions) == 1 else f"{sub.name}_{ses.name}"
            cases.append(Case(cid, images, str(msk) if msk else None, BINARY))
    if not cases:
        raise UserError(f"no ISLES'22 cases in {raw}: expected rawdata/sub-*/ses-*/dwi/*_dwi.nii.gz")
    return cases


# --- MSSEG-2 ---------------------------------------------------------------------------------------
def msseg2(root: Path, task: str) -> list[Case]:
    _require_dir(root, "MSSEG-2")
    _check_task_inputs(task, msseg2_files("case"), "msseg2")
    cases = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        stems = msseg2_files(d.name)
        t1, t2 = _find(root, stems["flair_baseline"]), _find(root, stems["flair_followup"])
        if t1 and t2:
            gt = _find(root, stems["label"])
            cases.append(Case(d.name, {"flair_baseline": ImageRef(str(t1)), "flair_followup": ImageRef(str(t2))},
                              str(gt) if gt else None, BINARY))
    if not cases:
        raise UserError(f"no MSSEG-2 cases in {root}: expected CASE/flair_time01_on_middle_space.nii.gz, "
                        "flair_time02_on_middle_space.nii.gz and ground_truth.nii.gz")
    return cases


# --- generic datalist (the format of LesionFactorizerLib.datalist) --------------------------------
def datalist(path: Path, task: str, label_map: dict | None = None) -> list[Case]:
    """Cases of a CSV/TSV/JSON datalist (see :mod:`LesionFactorizerLib.datalist`); labels use
    ``label_map`` (raw → task value) or, without one, the task's own label values."""
    t = get_task(task)
    valid = {spec.value for spec in t.labels}
    if label_map:
        mapping = {int(k): int(v) for k, v in label_map.items()}
        bad = sorted(v for v in mapping.values() if v != 0 and v not in valid)
        if bad:
            raise UserError(f"data.label_map maps onto {bad}, which task {task!r} does not have; its labels are "
                            f"{', '.join(f'{s.value} {s.name}' for s in t.labels)}")
    else:
        mapping = task_label_map(task)
    entries = read_datalist(path, t.input_names, t.required_inputs)
    return [Case(e.id, {n: ImageRef(p) for n, p in e.inputs.items()}, e.label, dict(mapping), e.fold)
            for e in entries]


def _check_task_inputs(task: str, provided, layout: str) -> None:
    t = get_task(task)
    missing = [n for n in t.required_inputs if n not in provided]
    if missing:
        raise UserError(f"the {layout} layout does not provide {missing} needed by task {task!r}; "
                        "pick the matching task or a datalist")


ADAPTERS = {"msd-task01": msd_task01, "brats": brats, "isles22": isles22, "msseg2": msseg2}
FORMATS = tuple(ADAPTERS) + ("datalist",)


def discover(fmt: str, root: str | Path, task: str, label_map: dict | None = None,
             require_labels: bool = True) -> list[Case]:
    """All cases of a data set, in a stable order (the order k-fold splitting depends on)."""
    root = Path(root).expanduser()
    if fmt == "datalist":
        cases = datalist(root, task, label_map)
    elif fmt in ADAPTERS:
        cases = ADAPTERS[fmt](root, task)
    else:
        raise UserError(f"unknown data format {fmt!r}; use {', '.join(FORMATS)}")
    if require_labels:
        unlabeled = [c.id for c in cases if not c.label]
        if unlabeled:
            raise UserError(f"{len(unlabeled)} case(s) have no label file (first: {unlabeled[0]}); "
                            "training and evaluation need a label for every case")
    for c in cases:
        for name, ref in c.images.items():
            if not Path(ref.path).is_file():
                raise UserError(f"case {c.id}: input {name} file {ref.path} does not exist")
        if c.label and not Path(c.label).is_file():
            raise UserError(f"case {c.id}: label file {c.label} does not exist")
    return cases


def read_image_ref(ref: ImageRef, name: str = "input"):
    """A case's input as a float32 3-D SimpleITK image: the inference reader
    (:func:`LesionFactorizerLib.pipeline.io.read_image`), plus picking one volume of a
    multi-volume file (MSD Task01 keeps all four MRI contrasts in one 4-D file)."""
    import SimpleITK as sitk

    from LesionFactorizerLib.pipeline.io import read_image

    if ref.channel is None:
        return read_image(ref.path, name)[0]
    try:
        img = sitk.ReadImage(ref.path)
    except RuntimeError as exc:
        raise UserError(f"input {name}: cannot read {ref.path} ({str(exc).strip().splitlines()[-1]})") from None
    if img.GetDimension() == 4:
        size = list(img.GetSize())
        if ref.channel >= size[3]:
            raise UserError(f"input {name}: {ref.path} has {size[3]} volumes; volume {ref.channel} was requested")
        img = sitk.Extract(img, size[:3] + [0], [0, 0, 0, ref.channel])
    elif img.GetNumberOfComponentsPerPixel() > ref.channel:
        img = sitk.VectorIndexSelectionCast(img, ref.channel)
    else:
        raise UserError(f"input {name}: {ref.path} holds one volume; volume {ref.channel} was requested")
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"input {name}: {ref.path} is not a 3-D scalar image")
    return sitk.Cast(img, sitk.sitkFloat32)
