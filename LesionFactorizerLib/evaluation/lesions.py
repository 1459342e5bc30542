"""Lesion-wise detection metrics with the MSSEG-2 rules (animaSegPerfAnalyzer).

What a lesion is (connected component, small-lesion rule) is the pipeline's definition
(``pipeline/lesions.py``), so the evaluation counts the lesions a report lists. See the package
docstring for the rules and their defaults; the rule itself is in :func:`_detected`, written from
the published description of the challenge's evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from LesionFactorizerLib.pipeline.lesions import label_lesions


def _detected(table: np.ndarray, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """For each row lesion i ≥ 1 of an overlap table (rows: reference components with 0 =
    background; columns: test components with 0 = background), whether it is detected."""
    col_total = table.sum(axis=0)
    out = np.zeros(table.shape[0] - 1, dtype=bool)
    for i in range(1, table.shape[0]):
        covered = int(table[i, 1:].sum())
        size = covered + int(table[i, 0])
        if size == 0 or covered / size <= alpha:
            continue
        ok, weight = True, 0.0
        cols = np.flatnonzero(table[i, 1:]) + 1
        for j in cols[np.argsort(-table[i, cols], kind="stable")]:
            if weight >= gamma:
                break
            # Share of test lesion j lying outside every reference lesion: a huge blob that
            # happens to cover a small lesion must not count as its detection.
            if table[0, j] / col_total[j] > beta:
                ok = False
                break
            weight += table[i, j] / covered
        out[i - 1] = ok
    return out


@dataclass
class DetectionResult:
    n_ref: int              # reference lesions after small-lesion removal
    n_pred: int             # predicted lesions (NLP) after small-lesion removal
    tp_ref: int             # reference lesions detected
    tp_pred: int            # predicted lesions that hit a reference lesion
    sensitivity: float      # tp_ref / n_ref (NaN if n_ref == 0)
    ppv: float              # tp_pred / n_pred (NaN if n_pred == 0)
    f1: float               # NaN if n_ref == 0; 0 if lesions exist and none is predicted
    pred_volume_mm3: float  # VLP: predicted volume before small-lesion removal

    def as_dict(self) -> dict:
        return asdict(self)


def detect_lesions(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None,
                   connectivity: int = 18, min_volume_mm3: float = 3.0, alpha: float = 0.10,
                   beta: float = 0.70, gamma: float = 0.65) -> DetectionResult:
    """Lesion-wise sensitivity / PPV / F1 of ``pred`` against ``ref`` (MSSEG-2 rules)."""
    p, r = np.asarray(pred).astype(bool), np.asarray(ref).astype(bool)
    if p.shape != r.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {r.shape}")
    lp, n_pred = label_lesions(p, spacing, connectivity, min_volume_mm3)
    lr, n_ref = label_lesions(r, spacing, connectivity, min_volume_mm3)
    table = np.bincount(lr.ravel().astype(np.int64) * (n_pred + 1) + lp.ravel(),
                        minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)
    tp_ref = int(_detected(table, alpha, beta, gamma).sum()) if n_ref and n_pred else 0
    tp_pred = int(_detected(table.T, alpha, beta, gamma).sum()) if n_ref and n_pred else 0
    sens = tp_ref / n_ref if n_ref else float("nan")
    ppv = tp_pred / n_pred if n_pred else float("nan")
    if not n_ref:
        f1 = float("nan")   # nothing to find: MSSEG-2 scores such cases by NLP / VLP instead
    elif not n_pred:
        f1 = 0.0            # every reference lesion missed: recall 0, so F1 0 whatever the precision
    else:
        f1 = 2 * ppv * sens / (ppv + sens) if ppv + sens > 0 else 0.0
    voxel_volume = float(np.prod(spacing)) if spacing is not None else 1.0
    return DetectionResult(n_ref, n_pred, tp_ref, tp_pred, sens, ppv, f1, float(p.sum()) * voxel_volume)
