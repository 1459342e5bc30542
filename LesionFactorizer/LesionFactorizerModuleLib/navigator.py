"""The lesion navigator, decided without Slicer: which lesions the table lists, which one "next" and
"previous" go to, which a confidence threshold hides, and what rejecting one does to the label
voxels and to report.json.

The module file only executes these decisions with MRML calls (centre the slice views on a
lesion, copy the changed labels back into the segments). Works on a label array ``(k, j, i)`` on
the grid of the run's segmentation (the reference input's grid, report.json ``geometry``): the
union of the segments, each voxel holding its segment's label value.

A lesion's voxels are found again in the label array from the report's ``seed_index`` (one voxel
inside it) and ``bbox_index``: the connected component through the seed inside the box, with the
run's connectivity. So the voxels are those of the lesion as the model found it, and a lesion the
reader has since edited is still picked out as it now is. Pure Python + numpy (Python 3.9+);
``scipy`` is used when Slicer's Python has it, else a slower numpy flood fill.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from LesionFactorizerLib.core.reportspec import add_reader_change, view

LESION_HEADERS = ["Lesion", "Volume (mL)", "Confidence", "Location"]
REJECT_ACTION = "reject_lesion"
THRESHOLD_ATTRIBUTE = "LesionFactorizer.ConfidenceThreshold"  # on the segmentation node: what is hidden


def hidden_segment_name(label_name: str) -> str:
    """The segment that holds a label's lesions hidden by the confidence threshold (kept, not shown)."""
    return f"{label_name} (below confidence threshold)"


@dataclass(frozen=True)
class Lesion:
    id: int
    volume_ml: float
    voxels: int
    confidence: Optional[float]       # None: the report predates confidence
    uncertainty: Optional[float]
    detected_fraction: Optional[float]
    side: Optional[str]
    centroid_ras: Tuple[float, float, float]
    seed_index: Tuple[int, int, int]  # (i, j, k) on the segmentation grid
    bbox_index: Tuple[Tuple[int, int, int], Tuple[int, int, int]]   # [start, stop) in (i, j, k)

    def location(self) -> str:
        r, a, s = self.centroid_ras
        ras = f"R {r:.0f}, A {a:.0f}, S {s:.0f} mm"
        return f"{self.side} ({ras})" if self.side else ras

    def cells(self) -> List[str]:
        confidence = "" if self.confidence is None else f"{self.confidence:.2f}"
        return [str(self.id), f"{self.volume_ml:.3f}", confidence, self.location()]

    def tooltip(self) -> str:
        parts = [f"lesion {self.id}: {self.voxels} voxels"]
        if self.uncertainty is not None:
            parts.append(f"uncertainty {self.uncertainty:.2f} bits")
        if self.detected_fraction is not None:
            parts.append(f"found by {self.detected_fraction:.0%} of the passes")
        return ", ".join(parts)


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def lesions_from_report(report: Mapping[str, Any]) -> List[Lesion]:
    """The report's lesions in its order (ids number them by decreasing size)."""
    rows = view(report).lesions
    if not isinstance(rows, list):
        raise ValueError("report.json has no lesion table ('lesions'); it was written by another version.")
    lesions = []
    for row in rows:
        try:
            lesions.append(Lesion(
                id=int(row["id"]), volume_ml=float(row["volume_ml"]), voxels=int(row["voxels"]),
                confidence=_float(row.get("confidence")), uncertainty=_float(row.get("uncertainty")),
                detected_fraction=_float(row.get("detected_fraction")), side=row.get("side"),
                centroid_ras=tuple(float(c) for c in row["centroid_ras"]),
                seed_index=tuple(int(c) for c in row["seed_index"]),
                bbox_index=(tuple(int(c) for c in row["bbox_index"][0]), tuple(int(c) for c in row["bbox_index"][1]))))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"report.json lesion {row.get('id') if isinstance(row, Mapping) else row!r} lacks "
                             f"{exc}; the navigator needs a report written by LesionFactorizer 0.1 with seed_index.")
    return lesions


# ---- voxels of one lesion


def _neighbourhood(connectivity: int) -> List[Tuple[int, int, int]]:
    """Offsets of the 6-, 18- or 26-neighbourhood (as pipeline.lesions defines a lesion)."""
    limit = {6: 1, 18: 2, 26: 3}[int(connectivity)]
    return [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
            if 0 < abs(a) + abs(b) + abs(c) <= limit]


def _component_numpy(mask: np.ndarray, seed: Tuple[int, int, int], connectivity: int) -> np.ndarray:
    """The connected component of ``mask`` through ``seed`` (k, j, i): grow a region one
    neighbourhood step at a time, never leaving the mask."""
    region = np.zeros(mask.shape, dtype=bool)
    region[seed] = True
    offsets = _neighbourhood(connectivity)
    padded = np.zeros(tuple(n + 2 for n in mask.shape), dtype=bool)
    inner = (slice(1, -1),) * 3
    while True:
        padded[inner] = region
        grown = region.copy()
        for dk, dj, di in offsets:
            grown |= padded[1 + dk:padded.shape[0] - 1 + dk, 1 + dj:padded.shape[1] - 1 + dj,
                            1 + di:padded.shape[2] - 1 + di]
        grown &= mask
        if np.array_equal(grown, region):
            return region
        region = grown


def _component(mask: np.ndarray, seed: Tuple[int, int, int], connectivity: int) -> np.ndarray:
    try:
        from scipy import ndimage
    except ImportError:   # not every Slicer Python has scipy; the same component, more slowly
        return _component_numpy(mask, seed, connectivity)
    rank = {6: 1, 18: 2, 26: 3}[int(connectivity)]
    labelled, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, rank))
    return labelled == labelled[seed]


def lesion_voxels(labels: np.ndarray, lesion: Lesion, connectivity: int) -> Tuple[Tuple[slice, ...], np.ndarray]:
    """(box, mask within the box) of ``lesion`` in ``labels`` (k, j, i); an empty mask when the
    seed voxel is no longer labelled (the reader erased it)."""
    (i0, j0, k0), (i1, j1, k1) = lesion.bbox_index
    box = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
    inside = labels[box] > 0
    si, sj, sk = lesion.seed_index
    seed = (sk - k0, sj - j0, si - i0)
    if not all(0 <= s < n for s, n in zip(seed, inside.shape)) or not inside[seed]:
        return box, np.zeros(inside.shape, dtype=bool)
    return box, _component(inside, seed, connectivity)


# ---- the navigator


class LesionNavigator:
    """Ordered lesions of one run, the current one, the confidence threshold and the reader's rejections.

    ``labels`` (k, j, i) is edited in place by :meth:`set_threshold` and :meth:`reject`, which
    return the label values whose voxels changed (the segments to copy back).
    """

    def __init__(self, report: Dict[str, Any], labels: np.ndarray):
        parsed = view(report)
        size = (parsed.geometry or {}).get("size")
        if size is not None and tuple(labels.shape) != tuple(reversed([int(s) for s in size])):
            raise ValueError(f"the segmentation's grid {tuple(reversed(labels.shape))} is not the report's "
                             f"{tuple(size)}; the lesion table does not belong to it.")
        self.report = report
        self.labels = labels
        self.lesions = lesions_from_report(report)
        self.connectivity = int((parsed.settings or {}).get("connectivity", 26))
        self.threshold = 0.0
        self.current: Optional[int] = None   # lesion id
        self.rejected = {int(c["lesion_id"]) for c in parsed.reader_changes or []
                         if c.get("action") == REJECT_ACTION}
        # hidden lesions' voxels, kept to be put back: id -> (box, mask in box, label values)
        self._parked: Dict[int, Tuple[Tuple[slice, ...], np.ndarray, np.ndarray]] = {}

    # -- what is listed and shown

    def by_id(self, lesion_id: int) -> Lesion:
        for lesion in self.lesions:
            if lesion.id == int(lesion_id):
                return lesion
        raise KeyError(f"no lesion {lesion_id} in this result")

    def listed(self) -> List[Lesion]:
        """The table's rows: every lesion not rejected, hidden ones included (they can come back)."""
        return [lesion for lesion in self.lesions if lesion.id not in self.rejected]

    def is_hidden(self, lesion: Lesion) -> bool:
        return lesion.confidence is not None and lesion.confidence < self.threshold

    def visible(self) -> List[Lesion]:
        return [lesion for lesion in self.listed() if not self.is_hidden(lesion)]

    # -- moving through them

    def select(self, lesion_id: int) -> Lesion:
        lesion = self.by_id(lesion_id)
        if lesion.id in self.rejected:
            raise ValueError(f"lesion {lesion.id} was rejected")
        self.current = lesion.id
        return lesion

    def step(self, delta: int) -> Optional[Lesion]:
        """The next (+1) or previous (-1) visible lesion after the current one, wrapping around;
        None when no lesion is visible."""
        shown = self.visible()
        if not shown:
            self.current = None
            return None
        ids = [lesion.id for lesion in shown]
        if self.current in ids:
            index = (ids.index(self.current) + delta) % len(ids)
        else:   # the current one was hidden or rejected: continue from where it stood in the full order
            order = [lesion.id for lesion in self.lesions]
            position = order.index(self.current) if self.current in order else -1
            after = [i for i, lesion_id in enumerate(ids) if order.index(lesion_id) > position]
            if delta > 0:
                index = after[0] if after else 0
            else:
                before = [i for i, lesion_id in enumerate(ids) if order.index(lesion_id) < position]
                index = before[-1] if before else len(ids) - 1
        self.current = ids[index]
        return shown[index]

    def next(self) -> Optional[Lesion]:
        return self.step(+1)

    def previous(self) -> Optional[Lesion]:
        return self.step(-1)

    # -- editing the labels

    def set_threshold(self, threshold: float) -> List[int]:
        """Hide lesions whose confidence is below ``threshold`` (their voxels leave the labels and
        are kept here, see :meth:`hidden_labels`), show again those at or above it. Returns the
        label values that changed."""
        self.threshold = float(threshold)
        changed = set()
        for lesion in self.listed():
            hide = self.is_hidden(lesion)
            if hide and lesion.id not in self._parked:
                box, mask = lesion_voxels(self.labels, lesion, self.connectivity)
                values = self.labels[box][mask]
                self._parked[lesion.id] = (box, mask, values.copy())
                self.labels[box][mask] = 0
                changed.update(int(v) for v in np.unique(values))
            elif not hide and lesion.id in self._parked:
                box, mask, values = self._parked.pop(lesion.id)
                target = self.labels[box]
                free = target[mask] == 0    # never overwrite what the reader painted meanwhile
                restored = target[mask]
                restored[free] = values[free]
                target[mask] = restored
                changed.update(int(v) for v in np.unique(values))
        return sorted(changed)

    def hidden_labels(self) -> np.ndarray:
        """The hidden lesions' voxels with their label values (0 elsewhere): with ``labels`` they make
        up every lesion not rejected, so the module keeps them in the scene, out of sight."""
        hidden = np.zeros_like(self.labels)
        for box, mask, values in self._parked.values():
            target = hidden[box]
            target[mask] = values
        return hidden

    def reject(self, lesion_id: int, reader: Optional[str] = None) -> Tuple[List[int], Dict[str, Any]]:
        """Remove a lesion's voxels for good and record the reader's change in the report
        (``reader_changes``). Returns (label values that changed, the change entry)."""
        lesion = self.by_id(lesion_id)
        if lesion.id in self.rejected:
            raise ValueError(f"lesion {lesion.id} was already rejected")
        ml_per_voxel = lesion.volume_ml / lesion.voxels if lesion.voxels else 0.0
        if lesion.id in self._parked:   # hidden: its voxels are already out of the labels
            _, _, values = self._parked.pop(lesion.id)
        else:
            box, mask = lesion_voxels(self.labels, lesion, self.connectivity)
            values = self.labels[box][mask]
            self.labels[box][mask] = 0
        change = {"action": REJECT_ACTION, "lesion_id": lesion.id, "voxels_removed": int(values.size),
                  "volume_ml_removed": float(values.size * ml_per_voxel), "confidence": lesion.confidence,
                  "reader": reader or _user(),
                  "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "tool": "LesionFactorizer Slicer module"}
        add_reader_change(self.report, change)
        self.rejected.add(lesion.id)
        if self.current == lesion.id:
            self.step(+1)
        return sorted({int(v) for v in np.unique(values)}), change


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): the change is still recorded
        return "unknown"


def write_report(path: "str | os.PathLike[str]", report: Mapping[str, Any]) -> None:
    """report.json replaced in one step: a temporary file in the same folder, then renamed over
    it, so a crash never leaves a half-written report."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".json.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(report, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def labels_from_masks(masks: Sequence[Tuple[int, np.ndarray]]) -> np.ndarray:
    """One label array from (label value, binary mask) per segment (later segments win overlaps)."""
    labels = np.zeros(masks[0][1].shape, dtype=np.uint8)
    for value, mask in masks:
        labels[np.asarray(mask) > 0] = value
    return labels
