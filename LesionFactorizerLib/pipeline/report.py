"""report.json, lesions.csv and the overview.png quality-control picture."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from LesionFactorizerLib.core.settings import OPTIONS, REPORTED_ELSEWHERE, json_types
from LesionFactorizerLib.core.reportspec import REPORT_NAME, Damaged, RecordedFile, Report, field_value, read_report

LESION_COLUMNS = ("id", "voxels", "volume_ml", "centroid_x_lps", "centroid_y_lps", "centroid_z_lps",
                  "centroid_r_ras", "centroid_a_ras", "centroid_s_ras")
# per-lesion confidence (pipeline/confidence.py); an empty cell where a measure was not taken
# (detected_fraction / agreement after a single pass: report.json "confidence" says why)
CONFIDENCE_COLUMNS = ("side", "confidence", "uncertainty", "detected_fraction", "agreement")


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_lesions_csv(path: Path, lesions: list[dict], label_names: list[str]) -> None:
    extra = [f"{name}_ml" for name in label_names] if lesions and "label_volume_ml" in lesions[0] else []
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*LESION_COLUMNS, *extra, *CONFIDENCE_COLUMNS])
        for row in lesions:
            w.writerow([row["id"], row["voxels"], f"{row['volume_ml']:.6f}",
                        *(f"{c:.3f}" for c in row["centroid_lps"]), *(f"{c:.3f}" for c in row["centroid_ras"]),
                        *(f"{row['label_volume_ml'][n]:.6f}" for n in label_names if extra),
                        *(_cell(row.get(c)) for c in CONFIDENCE_COLUMNS)])


def _axial(image):
    """numpy [k, j, i] in LPS orientation: slices are axial, rows run anterior→posterior and
    columns patient right→left (radiological display)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def write_overview(path: Path, inputs: list, labels_image, task, component: tuple | None = None) -> None:
    """A few axial slices of every input with the label overlay, plus components of one layer.

    ``component``: (layer name, SimpleITK vector image of that layer[, [(component, title), …]])
    or None; without the list, the first four components are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    from matplotlib.colors import ListedColormap

    oriented = sitk.DICOMOrient(labels_image, "LPS")
    lab = sitk.GetArrayFromImage(oriented)
    spacing = oriented.GetSpacing()
    aspect = float(spacing[1] / spacing[0])   # row/column pixel aspect of the axial slices
    lesion_z = np.flatnonzero(lab.reshape(lab.shape[0], -1).any(axis=1))
    if lesion_z.size:
        # area-weighted quantiles: slices through the bulk of the lesion load, not through stray specks
        areas = (lab > 0).reshape(lab.shape[0], -1).sum(axis=1)
        cumulative = np.cumsum(areas) / areas.sum()
        zs = sorted({int(np.searchsorted(cumulative, q)) for q in (0.15, 0.5, 0.85)})
    else:
        first = _axial(inputs[0].image)
        brain = np.flatnonzero(first.reshape(lab.shape[0], -1).any(axis=1))
        brain = brain if brain.size else np.arange(lab.shape[0])
        zs = sorted({int(brain[len(brain) // 3]), int(brain[len(brain) // 2]), int(brain[(2 * len(brain)) // 3])})
        del first
    lab = lab[zs]

    def window(vol):
        nz = vol[vol != 0]
        return np.percentile(nz, [1, 99]) if nz.size else (0.0, 1.0)

    # Keep only the shown slices (and each input's display window): full re-oriented copies of
    # four BraTS-size volumes would cost more memory than the rest of the output stage.
    vols = []
    for item in inputs:
        full = _axial(item.image)
        vols.append((item.name, full[zs].copy(), window(full)))
        del full

    comp_cols = []
    if component is not None:
        name, image = component[:2]
        k = image.GetNumberOfComponentsPerPixel()
        picks = component[2] if len(component) > 2 else [(c, f"{name} #{c}") for c in range(min(k, 4))]
        # resampled onto the shown slices only (an image slice keeps its physical geometry), not
        # onto the whole reference volume
        slices = [oriented[:, :, z:z + 1] for z in zs]
        for c, title in picks:
            scalar = sitk.VectorIndexSelectionCast(image, int(c), sitk.sitkFloat32)
            comp_cols.append((title, np.concatenate([sitk.GetArrayFromImage(sitk.Resample(
                scalar, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)) for ref in slices])))
            del scalar
    del oriented

    ncols = len(vols) + 1 + len(comp_cols)
    fig, axes = plt.subplots(len(zs), ncols, figsize=(2.2 * ncols, 2.3 * len(zs)), squeeze=False)
    colors = np.zeros((256, 4))
    for lb in task.labels:
        colors[lb.value] = [*(np.array(lb.color) / 255.0), 0.55]
    cmap = ListedColormap(colors)
    # overlays go on the task's reference input: for ms-new the follow-up FLAIR, the one scan
    # in which the new lesions are visible
    names = [name for name, _, _ in vols]
    back = names.index(task.reference) if task.reference in names else 0
    for r, z in enumerate(zs):
        for c, (name, vol, (lo, hi)) in enumerate(vols):
            axes[r, c].imshow(vol[r], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
            axes[r, c].set_title(f"{name}  z={z}" if r == 0 else f"z={z}", fontsize=8)
        name, vol, (lo, hi) = vols[back]
        ax = axes[r, len(vols)]
        ax.imshow(vol[r], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
        ax.imshow(lab[r], cmap=cmap, vmin=0, vmax=255, interpolation="nearest", aspect=aspect)
        ax.set_title(f"labels on {name}" if r == 0 else "", fontsize=8)
        for c, (title, comp) in enumerate(comp_cols):
            ax = axes[r, len(vols) + 1 + c]
            ax.imshow(vol[r], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect=aspect)
            top = float(comp.max()) or 1.0
            ax.imshow(np.ma.masked_less_equal(comp[r], 0.05 * top), cmap="inferno", vmin=0, vmax=top, alpha=0.7,
                      interpolation="nearest", aspect=aspect)
            ax.set_title(title if r == 0 else "", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=np.array(lb.color) / 255.0) for lb in task.labels]
    fig.legend(handles, [f"{lb.value} {lb.title}" for lb in task.labels], loc="lower center",
               ncol=len(task.labels), fontsize=8, frameon=False)
    fig.suptitle(f"{task.title}: axial slices (radiological view: patient right on the left)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Reading report.json back for a re-run: reportspec's checks, plus the settings a re-run passes on
# ------------------------------------------------------------------------------------------------
# recorded settings a re-run passes on, with the JSON types each may have (None always allowed)
RERUN_SETTINGS = {o.name: json_types(o) for o in OPTIONS if o.name not in REPORTED_ELSEWHERE}


@dataclass
class RunReport:
    """A ``segment`` run's report.json, parsed (``report``) and its re-run settings checked."""

    folder: Path
    report: Report

    @property
    def data(self) -> dict:
        return self.report.to_json()

    @property
    def task(self) -> str:
        return self.report.task

    @property
    def inputs(self) -> list[RecordedFile]:
        return self.report.input_files

    @property
    def models(self) -> list[RecordedFile] | None:
        return self.report.model_files

    @property
    def model(self) -> RecordedFile:
        return self.report.model_file

    @property
    def outputs(self) -> dict[str, str]:
        return dict(self.report.outputs)

    @property
    def settings(self) -> dict:
        return self.report.settings

    @property
    def register(self) -> str:
        return self.report.registration_mode

    def output(self, key: str) -> Path:
        return self.folder / self.report.outputs[key]

    def missing_outputs(self) -> list[str]:
        """Listed outputs that are not in the folder (a result that was not finished or was damaged)."""
        return [file for file in self.report.outputs.values() if not (self.folder / file).exists()]


def read_run_report(folder: str | Path) -> RunReport:
    """report.json of the ``segment`` run in ``folder`` (:func:`reportspec.read_report`), with the
    settings a re-run passes on checked; a :class:`UserError` (one line) when anything is amiss."""
    from LesionFactorizerLib.core.errors import UserError

    report = read_report(folder)
    try:
        for key, types in RERUN_SETTINGS.items():
            field_value(report.settings, key, types, "settings ", required=False)
        for n, layer in enumerate(field_value(report.settings, "skip_nmf", (list,), "", required=False) or []):
            if not isinstance(layer, str):
                raise Damaged(f"settings 'skip_nmf'[{n}] is not a layer name")
    except Damaged as exc:
        raise UserError(f"{Path(folder) / REPORT_NAME}: {exc}; the report is damaged — run the segmentation "
                        "again") from None
    return RunReport(Path(folder), report)
