"""Per-case evaluation of label files, cohort summaries and paired comparisons.

Label maps use the task's canonical values (`core/tasks.py`: tumor 1 NCR, 2 ED, 3 ET; stroke and
ms-new 1 lesion). Metrics are computed per evaluation *region* — for tumor the nested BraTS
regions ET ⊂ TC ⊂ WT — on the reference's voxel grid with its spacing.

For tasks scored on false-positive lesions (``false_positive_lesions`` in ``Task.metrics``: ms-new)
the MSSEG-2 protocol applies: Dice/HD95/lesion-wise scores only for cases whose reference has
lesions; NLP/VLP only for cases without (the other cells are NaN).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from LesionFactorizerLib.evaluation.lesions import detect_lesions
from LesionFactorizerLib.evaluation.overlap import dice, hausdorff95
from LesionFactorizerLib.core.tasks import get_task, image_suffix, is_image_file


def regions_for(task: str) -> dict[str, tuple[int, ...]]:
    """Region name → label values, from the task definition (tumor: ET, TC, WT; single-label
    tasks: the label itself)."""
    t = get_task(task)
    if t.regions:
        return {r.name: tuple(r.labels) for r in t.regions}
    return {label.name: (label.value,) for label in t.labels}


def scores_empty_cases_by_false_positives(task: str) -> bool:
    """MSSEG-2 protocol: cases without reference lesions are scored by the false positives
    (NLP/VLP), not by Dice; the task says so by listing ``false_positive_lesions`` as a metric."""
    return "false_positive_lesions" in get_task(task).metrics


def _detection_params(task: str) -> tuple[int, float] | None:
    """(connectivity, min lesion mm³) for single-label lesion tasks, None otherwise."""
    t = get_task(task)
    if len(t.labels) != 1:
        return None
    return t.postprocessing.connectivity, t.postprocessing.min_lesion_mm3


def evaluate_arrays(pred: np.ndarray, ref: np.ndarray, task: str, spacing: Sequence[float] | None = None,
                    hd_empty: float | str = float("nan"), connectivity: int | None = None,
                    min_lesion_mm3: float | None = None) -> dict[str, float]:
    """All metrics of one case as a flat ``{column: value}`` row (arrays in the same axis order
    as ``spacing``). Lesion-wise detection (single-label tasks) uses the task's lesion
    definition (ms-new: 18-connectivity, ≥ 3 mm³) unless ``connectivity``/``min_lesion_mm3``
    are given."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference grids differ: {pred.shape} vs {ref.shape}")
    voxel_ml = (float(np.prod(spacing)) if spacing is not None else 1.0) / 1000.0
    row: dict[str, float] = {}
    ms_protocol = scores_empty_cases_by_false_positives(task)
    has_lesion = bool((ref > 0).any())
    for name, values in regions_for(task).items():
        p, r = np.isin(pred, values), np.isin(ref, values)
        row[f"ref_ml_{name}"] = float(r.sum()) * voxel_ml
        row[f"pred_ml_{name}"] = float(p.sum()) * voxel_ml
        if ms_protocol and not has_lesion:
            row[f"dice_{name}"] = row[f"hd95_{name}"] = float("nan")
        else:
            row[f"dice_{name}"] = dice(p, r)
            row[f"hd95_{name}"] = hausdorff95(p, r, spacing, empty_value=hd_empty)
    params = _detection_params(task)
    if params is not None:
        conn = connectivity if connectivity is not None else params[0]
        min_mm3 = min_lesion_mm3 if min_lesion_mm3 is not None else params[1]
        det = detect_lesions(pred > 0, ref > 0, spacing, conn, min_mm3)
        row.update(n_ref_lesions=det.n_ref, n_pred_lesions=det.n_pred, tp_ref=det.tp_ref, tp_pred=det.tp_pred,
                   lesion_sensitivity=det.sensitivity, lesion_ppv=det.ppv, lesion_f1=det.f1)
        if ms_protocol:
            no_new = det.n_ref == 0
            row["nlp"] = float(det.n_pred) if no_new else float("nan")
            row["vlp_mm3"] = det.pred_volume_mm3 if no_new else float("nan")
    return row


def read_label(path: str | Path):
    """(array in z,y,x order, spacing in the same order, SimpleITK image), read by the
    pipeline's image reader (UserError for a missing / unreadable / non-3-D file)."""
    import SimpleITK as sitk

    from LesionFactorizerLib.pipeline.io import read_image

    img = read_image(path, "label")[0]
    arr = sitk.GetArrayFromImage(img)
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise ValueError(f"{path}: label values must be integers")
    return arr.astype(np.int16), tuple(reversed(img.GetSpacing())), img


def evaluate_files(pred_path: str | Path, ref_path: str | Path, task: str, **kwargs) -> dict[str, float]:
    pred, _, pimg = read_label(pred_path)
    ref, spacing, rimg = read_label(ref_path)
    if not same_grid(pimg, rimg):
        raise ValueError(f"{pred_path} and {ref_path} are not on the same voxel grid "
                         "(size/spacing/origin/direction); resample the prediction onto the reference first")
    return evaluate_arrays(pred, ref, task, spacing, **kwargs)


def same_grid(a, b) -> bool:
    """Whether two SimpleITK images share size, spacing, origin and direction (label maps must
    be compared voxel by voxel on one grid) — :meth:`Geometry.same_grid`, the one test the
    inference pipeline and training use too."""
    from LesionFactorizerLib.pipeline.geometry import Geometry

    return Geometry.from_image(a).same_grid(Geometry.from_image(b))


def case_id(path: Path) -> str:
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def find_predictions(folder: str | Path) -> dict[str, Path]:
    """Case id → label file: either ``<case>.<ext>`` files or ``<case>/segmentation.<ext>``
    (the layout written by ``lesion-factorizer batch``)."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            segs = [q for q in sorted(p.iterdir()) if q.name.startswith("segmentation.")]
            if segs:
                found[p.name] = segs[0]
        elif is_image_file(p):
            found[case_id(p)] = p
    return found


def summarize(rows: Sequence[dict], keep_infinite: bool = False) -> list[dict]:
    """Mean / SD / median / count of every numeric column, NaNs excluded and counted (infinite
    values too, unless ``keep_infinite``: then they make the mean infinite, as pandas does)."""
    columns = [c for c in rows[0] if c != "case"] if rows else []
    out = []
    for c in columns:
        vals = np.array([float(r.get(c, float("nan"))) for r in rows], dtype=float)
        ok = vals[~np.isnan(vals)] if keep_infinite else vals[np.isfinite(vals)]
        with np.errstate(invalid="ignore"):   # the SD of values with an infinity is NaN
            sd = float(ok.std(ddof=1)) if ok.size > 1 else float("nan")
        out.append({
            "metric": c, "n": int(ok.size), "n_nan": int(vals.size - ok.size),
            "mean": float(ok.mean()) if ok.size else float("nan"),
            "sd": sd,
            "median": float(np.median(ok)) if ok.size else float("nan"),
        })
    return out


def wilcoxon_compare(rows_a: Sequence[dict], rows_b: Sequence[dict],
                     metrics: Iterable[str] | None = None) -> list[dict]:
    """Paired two-sided Wilcoxon signed-rank test per metric over the cases both sets share
    (cases where either value is NaN are dropped for that metric)."""
    from scipy.stats import wilcoxon

    a = {r["case"]: r for r in rows_a}
    b = {r["case"]: r for r in rows_b}
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two prediction sets share no case ids")
    names = list(metrics) if metrics is not None else [c for c in rows_a[0] if c != "case" and c in rows_b[0]]
    out = []
    for m in names:
        pairs = np.array([(float(a[c][m]), float(b[c][m])) for c in common], dtype=float)
        pairs = pairs[np.all(np.isfinite(pairs), axis=1)]
        diff = pairs[:, 0] - pairs[:, 1] if len(pairs) else np.zeros(0)
        if len(pairs) == 0:
            stat = p = float("nan")
        elif np.all(diff == 0):
            stat, p = 0.0, 1.0  # identical scores: no evidence of a difference
        else:
            res = wilcoxon(pairs[:, 0], pairs[:, 1])
            stat, p = float(res.statistic), float(res.pvalue)
        out.append({"metric": m, "n": int(len(pairs)),
                    "mean_a": float(pairs[:, 0].mean()) if len(pairs) else float("nan"),
                    "mean_b": float(pairs[:, 1].mean()) if len(pairs) else float("nan"),
                    "median_diff": float(np.median(diff)) if len(pairs) else float("nan"),
                    "statistic": stat, "p_value": p})
    return out


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    """Write rows atomically (temp file + rename), columns in first-seen order."""
    path = Path(path)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
    tmp.replace(path)


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v
