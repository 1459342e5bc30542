""""Drop this component": how the segmentation changes when one NMF component is left out.

The chosen NMF layer reconstructs its input from all components but one (``NMF.drop``: the
reconstruction ``U Vᵀ`` summed over the other components); everything else — inputs, model files,
settings — is what the earlier ``segment`` run recorded in its ``report.json``, so the only
difference between the two segmentations is that component. The case is run again through the
same stages as ``segment`` (read → prepare → sliding-window inference → post-processing); nothing
upstream of the layer is cached, which keeps one code path and is fast enough on the demo models
(timings in ``counterfactual.json`` and ``benchmarks/bench_component_ranking.py``).

Nothing in report.json is taken on trust: it is parsed strictly (``pipeline/report.read_run_report``),
the segmentation it names must lie inside the result folder, and every input and model file is
compared with its recorded SHA-256; a run without checksums is refused unless ``--trust-inputs``.

Outputs (``RESULT_DIR/counterfactual/<layer>-<component>/`` unless ``--output``: never the result
folder, a folder holding it, a place among its outputs or another run's folder), written in a
temporary folder, read back, then swapped in:

- ``segmentation<ext>``: the labels without the component, on the reference input's grid, in the
  run's format (``.seg.nrrd`` too);
- ``difference<ext>``: 0 unchanged, 1 added (background → lesion), 2 removed (lesion →
  background), 3 relabelled (one lesion label → another); not the task's labels, so in the run's
  format for maps (``.nrrd`` for a ``.seg.nrrd`` run);
- ``counterfactual.json``: per label the volume before / after / change in mL, voxel counts of the
  difference, the component's ranking score, timings;
- ``difference.png``: axial slices through the most changed voxels, the difference over the
  reference input with the original lesion outlined (the CLI user's view of the overlay).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.pipeline.groups import DIFFERENCE, component_count, difference_map
from LesionFactorizerLib.core.reportspec import (COUNTERFACTUAL_FOLDER, COUNTERFACTUAL_OUTPUTS, FOLDER_KEY, OUTPUTS,
                                            REPORT_NAME)

FORMAT = "lesion-factorizer-counterfactual"
DIFFERENCE_COLOURS = {1: (0.1, 0.8, 0.2), 2: (0.9, 0.1, 0.1), 3: (0.95, 0.85, 0.1)}


def dropped(model, layer: str, component: int):
    """Within the block, ``layer``'s NMF reconstructs without ``component`` (any forward path)."""
    from LesionFactorizerLib.pipeline.groups import selected

    return selected(model, layer, component, "drop")


@dataclass
class Source:
    """What an earlier ``segment`` run recorded, checked: the counterfactual repeats it exactly."""

    folder: Path
    report: dict
    inputs: dict[str, str]
    models: list[str]
    segmentation: Path
    format: str
    checksums: dict[str, str]     # input name or model path → recorded SHA-256 (every file it runs on)
    unchecked: list[str]          # what has no recorded checksum (run only with trust_inputs)
    recorded: Any                 # the parsed report (pipeline/report.RunReport)

    def ranking_of(self, layer: str, key: str = "ranking") -> list[dict]:
        """A layer's overlap ranking (``effect_ranking``: its effect ranking), best first."""
        return list((self.recorded.report.component_entry(layer) or {}).get(key) or [])


def image_format(name: str) -> str | None:
    """The output format a file name was written in (the longest ending: .seg.nrrd, not .nrrd)."""
    from LesionFactorizerLib.pipeline.io import IMAGE_FORMATS

    found = [f for f, ext in IMAGE_FORMATS.items() if name.endswith(ext)]
    return max(found, key=lambda f: len(IMAGE_FORMATS[f]), default=None)


def read_source(folder: str | Path, inputs: dict[str, str] | None = None, trust_inputs: bool = False) -> Source:
    """The earlier run in ``folder``; ``inputs`` (name → path) replace recorded input paths (files
    moved since), and must still be the same files (checked by SHA-256 when read). Inputs and models
    without a recorded checksum are refused unless ``trust_inputs``."""
    from LesionFactorizerLib.pipeline.report import read_run_report

    run = read_run_report(folder)
    folder = run.folder
    recorded = {i.name: i for i in run.inputs}
    unknown = [n for n in inputs or {} if n not in recorded]
    if unknown:
        raise UserError(f"--input {unknown[0]}: the segmentation in {folder} had no such input; its inputs were "
                        f"{', '.join(recorded)}")
    paths, checksums, unchecked = {}, {}, []
    for name, entry in recorded.items():
        given = (inputs or {}).get(name) or entry.path
        if not Path(given).exists():
            raise UserError(f"input {name} ({given}, recorded in report.json) is missing; give it with --input "
                            f"{name}=PATH")
        paths[name] = str(given)
        checksums[name] = entry.sha256
        if not entry.sha256:
            unchecked.append(f"input {name}")
    if run.models is None:
        # without the list an ensemble would silently run as its first member
        unchecked.append("the model list (report.json has no 'models')")
    models = []
    for entry in run.models or [run.model]:
        model = Path(entry.path)
        if not model.is_file():
            raise UserError(f"model {entry.name} ({model}) of the segmentation is missing; restore it, or segment "
                            "again with an available model")
        models.append(str(model))
        checksums[str(model)] = entry.sha256
        if not entry.sha256:
            unchecked.append(f"model {entry.name}")
    if unchecked and not trust_inputs:
        raise UserError(f"{folder / REPORT_NAME} records no checksum of {', '.join(unchecked)}, so the "
                        "counterfactual cannot check it runs on the files the segmentation used; segment again, or "
                        "pass --trust-inputs if you know they are unchanged")
    seg_name = run.outputs[OUTPUTS.segmentation.key]
    fmt = image_format(seg_name)
    if fmt is None or not run.output(OUTPUTS.segmentation.key).is_file():
        raise UserError(f"{folder} has no segmentation file listed in {REPORT_NAME}; run the segmentation again")
    return Source(folder, run.data, paths, models, run.output(OUTPUTS.segmentation.key), fmt, checksums, unchecked,
                  run)


def check_output(source: Source, final: Path) -> None:
    """The counterfactual never writes where it would mix with a segmentation run's results: not
    into the result folder (or a folder holding it), not beside its outputs, not into another run."""
    src, target = source.folder.resolve(), Path(final).resolve()
    if target == src or target in src.parents:
        raise UserError(f"--output {final} is the result folder of the segmentation (or holds it); choose another "
                        "folder, e.g. the default RESULT_DIR/counterfactual/<layer>-<component>")
    cf = src / COUNTERFACTUAL_FOLDER
    if src in target.parents and target != cf and cf not in target.parents:
        raise UserError(f"--output {final} is inside the segmentation's result folder among its outputs; choose a "
                        f"folder under {cf} or outside {src}")
    if (target / REPORT_NAME).exists():
        raise UserError(f"--output {final} holds a segmentation run (report.json): the counterfactual would replace "
                        "its segmentation while its report keeps the old numbers; choose another folder")


def default_output(source: Source, layer: str, component: int | None, mode: str = "drop") -> Path:
    from LesionFactorizerLib.pipeline.groups import folder_name

    return source.folder / COUNTERFACTUAL_FOLDER / folder_name(layer, component, mode)


def choose(source: Source, layer: str | None, component: int | None) -> tuple[str, int, str]:
    """The requested (layer, component) and what chose it: ``given``, ``effect`` (the run's effect
    ranking, `segment --effects`: the largest effect) or ``overlap`` (the overlap ranking's best)."""
    if layer is not None and component is not None:
        return layer, int(component), "given"
    if layer is None:
        best, basis = source.recorded.report.components_best_effect, "effect"
        if not best:
            best, basis = source.recorded.report.components_best, "overlap"
        if not best:
            raise UserError("give --layer (and --component): the segmentation has no component ranking (run "
                            "`segment --components` on a Factorizer model)")
        layer = best["layer"]
        if component is None:
            return layer, int(best["component"]), basis
    rows, basis = source.ranking_of(layer, "effect_ranking"), "effect"
    if not rows:
        rows, basis = source.ranking_of(layer), "overlap"
    if not rows:
        raise UserError(f"give --component: layer {layer} has no component ranking in the report")
    return layer, int(rows[0]["component"]), basis


def check_choice(source: Source, layer: str, component: int) -> None:
    """Before any heavy work, against the layers the run recorded (the model checks again later)."""
    from LesionFactorizerLib.core.layout import NMF_LAYERS

    if layer not in NMF_LAYERS:
        raise UserError(f"unknown layer {layer!r}; layers are: {', '.join(NMF_LAYERS)}")
    entry = source.recorded.report.component_entry(layer)
    if entry is not None and not 0 <= component < int(entry["components"]):
        raise UserError(f"--component {component} is out of range: layer {layer} has components 0 to "
                        f"{int(entry['components']) - 1}")


class Counterfactual:
    """The counterfactual mode of a :class:`~LesionFactorizerLib.pipeline.segment.Segmenter`
    (``Segmenter.from_report``): the recorded run it repeats, the one change (layer, component,
    mode), what chose it, and what it checks and writes at the Segmenter's stages."""

    def __init__(self, source: Source, layer: str, component: int | None, mode: str, chosen_by: str,
                 picture: bool):
        self.source, self.layer, self.component, self.mode = source, layer, component, mode
        self.chosen_by, self.picture = chosen_by, picture
        self.notes = [f"{what} has no recorded checksum: used as given (--trust-inputs)" for what in source.unchecked]

    @classmethod
    def of(cls, folder: str | Path, change, inputs: dict[str, str] | None, trust_inputs: bool,
           picture: bool) -> Counterfactual:
        """The run in ``folder`` (checked, :func:`read_source`) and ``change`` (``groups.DropComponent``)
        with its layer and component chosen and checked against what the run recorded."""
        from LesionFactorizerLib.pipeline.groups import MODES

        source = read_source(folder, inputs, trust_inputs)
        if change.mode not in MODES:
            raise UserError(f"unknown counterfactual mode {change.mode!r}; choose one of {', '.join(MODES)}")
        if change.mode == "skip" and change.layer is None:
            raise UserError("give --layer: which NMF layer to short-circuit")
        layer, component, chosen_by = choose(source, change.layer, 0 if change.mode == "skip" else change.component)
        check_choice(source, layer, component)
        return cls(source, layer, None if change.mode == "skip" else component, change.mode, chosen_by, picture)

    def settings(self, device: str):
        """The recorded run's settings, on ``device``, writing only the segmentation (in the run's format)."""
        from LesionFactorizerLib.core.settings import SegmentSettings

        # windows batched as recorded or by default (auto): the same labels as one at a time (tested)
        return SegmentSettings.from_report(self.source.report).but(
            models=self.source.models, device=device, format=self.source.format, overview=False, components=False,
            component_layers=None, effects=False, probabilities=False, uncertainty=False, dicom_seg=False)

    def default_output(self) -> Path:
        return default_output(self.source, self.layer, self.component, self.mode)

    def claims(self) -> list[str]:
        from LesionFactorizerLib.pipeline.io import IMAGE_FORMATS

        return COUNTERFACTUAL_OUTPUTS.claims(IMAGE_FORMATS.values())

    def check_output(self, final: Path) -> None:
        check_output(self.source, final)

    def describe(self) -> str:
        from LesionFactorizerLib.pipeline.groups import describe

        return describe(self.layer, self.component, self.mode)

    def check_inputs(self, case) -> None:
        """The inputs read are the files the segmentation was made from."""
        for item in case.inputs:
            recorded = self.source.checksums[item.name]
            if recorded and item.sha256 != recorded:
                raise UserError(f"input {item.name} ({item.path}) is not the file the segmentation was made from "
                                f"(its SHA-256 differs); give the original with --input {item.name}=PATH")

    def check_model_files(self, paths) -> None:
        """Before any model is loaded (a file that changed is never built): the files are the run's."""
        from LesionFactorizerLib.core.checksums import sha256

        for path, recorded in zip(paths, self.source.models):
            if self.source.checksums[recorded] and sha256(Path(path)) != self.source.checksums[recorded]:
                raise UserError(f"model file {path} changed since the segmentation (SHA-256 differs); segment again")

    def check_models(self, segmenter) -> None:
        """The models loaded are the run's files (the bytes loaded, checked again), and the chosen
        layer and component exist in them."""
        for m, path in zip(segmenter.loaded, self.source.models):
            if self.source.checksums[path] and m.sha256 != self.source.checksums[path]:
                raise UserError(f"model file {m.path} changed since the segmentation (SHA-256 differs); segment again")
        model = segmenter.component_model
        if model is None:
            raise UserError(f"model {segmenter.loaded[0].name} is not a Factorizer: it has no NMF components to drop")
        names = [n for n, _ in model.component_layers]
        if self.layer not in names:
            raise UserError(f"unknown layer {self.layer!r}; layers are: {', '.join(names)}")
        if self.layer in (segmenter.settings["skip_nmf"] or []):
            raise UserError(f"layer {self.layer} was short-circuited in the segmentation (--skip-nmf or preset); "
                            "choose another layer")
        count = component_count(model, self.layer)
        if self.component is not None and not 0 <= self.component < count:
            raise UserError(f"--component {self.component} is out of range: layer {self.layer} has components 0 to "
                            f"{count - 1}")

    def variant(self, segmenter):
        """The inference stage's context: the change applied to the network with components."""
        from LesionFactorizerLib.pipeline.groups import variant

        return variant(segmenter.component_model, self.layer, self.component, self.mode)

    def compare(self, segmenter, case, prediction, after: np.ndarray) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """counterfactual.json's comparison with the recorded segmentation, the labels before, the difference."""
        from LesionFactorizerLib.pipeline.groups import NOTES

        before = _read_labels(self.source.segmentation, case.reference)
        difference = difference_map(before, after)
        summary = _summary(self.source, self.layer, self.component, before, after, difference,
                           case.reference.geometry, segmenter.task, prediction.device)
        summary.update({"mode": self.mode, "chosen_by": self.chosen_by,
                        "effect": next((r for r in self.source.ranking_of(self.layer, "effect_ranking")
                                        if self.mode == "drop" and r["component"] == self.component), None)})
        if self.mode != "drop":
            summary["note"] = NOTES[self.mode]
        return summary, before, difference

    def write(self, segmenter, out, case, prediction, seg, log) -> tuple[dict[str, Any], dict[str, str]]:
        """The write stage: segmentation, difference (+ picture) and counterfactual.json into ``out``,
        read back, then committed; returns counterfactual.json's content and the outputs' paths (the
        Segmenter's ``Result``)."""
        from LesionFactorizerLib.pipeline.io import IMAGE_FORMATS, map_suffix

        log.progress.stage("write", "writing the counterfactual")
        t = time.monotonic()
        after, seg.labels = seg.labels, None
        summary, before, difference = self.compare(segmenter, case, prediction, after)
        # the segmentation in the run's format; the difference (not the task's labels) as its maps
        ext, diff_ext = IMAGE_FORMATS[self.source.format], map_suffix(self.source.format)
        written = {o.key: o.file_name(ext, diff_ext) for o in COUNTERFACTUAL_OUTPUTS if self.picture or o.required}
        with out as tmp:
            _write_labels(after, case.reference.image, tmp / written[COUNTERFACTUAL_OUTPUTS.segmentation.key],
                          segmenter.task)
            _write_labels(difference, case.reference.image, tmp / written[COUNTERFACTUAL_OUTPUTS.difference.key])
            lesion = summary["lesion"]
            if self.picture:
                write_difference_png(tmp / written[COUNTERFACTUAL_OUTPUTS.picture.key], case.reference, before, difference,
                                     f"{segmenter.task.title}: {self.describe()} — lesion "
                                     f"{lesion['before_ml']:.2f} → {lesion['after_ml']:.2f} mL "
                                     f"({lesion['delta_ml']:+.2f} mL)")
            timings = log.timings
            timings["write"] = time.monotonic() - t
            timings["total"] = time.monotonic() - log.t_start
            timings["cpu_total"] = time.process_time() - log.cpu_start   # CPU seconds of this process (all threads)
            summary.update({"timings_s": {k: round(v, 3) for k, v in timings.items()},
                            "sw_batch_size": prediction.sw_batch_size, "outputs": written,
                            "warnings": list(log.warnings)})
            _write_json_checked(tmp / written[COUNTERFACTUAL_OUTPUTS.summary.key], summary)
            out.commit()
        outputs = {k: str(out.final / v) for k, v in written.items()}
        outputs[FOLDER_KEY] = str(out.final)
        return summary, outputs


def write_difference_png(path: Path, reference, before: np.ndarray, difference: np.ndarray, title: str) -> None:
    """Three axial slices (those with the most changed voxels, else through the lesion) of the
    reference input, the original lesion outlined in cyan, added/removed/relabelled voxels in
    green/red/yellow; radiological view like overview.png. Read back: a PNG that does not decode fails."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    from matplotlib.colors import ListedColormap

    def axial(array):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference.image)
        return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))

    oriented = sitk.DICOMOrient(reference.image, "LPS")
    background = sitk.GetArrayFromImage(oriented).astype(np.float32)
    spacing = oriented.GetSpacing()
    diff, lesion = axial(difference), axial((before > 0).astype(np.uint8))
    weight = (diff > 0).reshape(diff.shape[0], -1).sum(axis=1)
    if not weight.any():
        weight = lesion.reshape(lesion.shape[0], -1).sum(axis=1)
    if not weight.any():
        weight = (background != 0).reshape(background.shape[0], -1).sum(axis=1)
    zs = sorted(int(z) for z in np.argsort(weight)[::-1][:3] if weight[z] > 0) or [background.shape[0] // 2]
    nz = background[background != 0]
    lo, hi = np.percentile(nz, [1, 99]) if nz.size else (0.0, 1.0)
    colours = np.zeros((4, 4))
    for value, rgb in DIFFERENCE_COLOURS.items():
        colours[value] = [*rgb, 0.85]
    fig, axes = plt.subplots(1, len(zs), figsize=(3.2 * len(zs), 3.6), squeeze=False)
    for ax, z in zip(axes[0], zs):
        ax.imshow(background[z], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest",
                  aspect=float(spacing[1] / spacing[0]))
        if lesion[z].any():
            ax.contour(lesion[z], levels=[0.5], colors="cyan", linewidths=0.8)
        ax.imshow(diff[z], cmap=ListedColormap(colours), vmin=0, vmax=3, interpolation="nearest",
                  aspect=float(spacing[1] / spacing[0]))
        ax.set_title(f"z={z}: +{int((diff[z] == 1).sum())} / -{int((diff[z] == 2).sum())} voxels", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=DIFFERENCE_COLOURS[v]) for v in (1, 2, 3)]
    fig.legend(handles, [DIFFERENCE[v] for v in (1, 2, 3)], loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title + "\n(cyan: original lesion outline; radiological view)", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.92))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    try:
        plt.imread(path)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the file is unusable
        raise UserError(f"writing {path.name} failed ({exc}); free disk space or choose another output "
                        "folder") from None


def _summary(source: Source, layer: str, component: int, before, after, difference, geometry, task,
             device: str) -> dict[str, Any]:
    from LesionFactorizerLib import __version__
    from LesionFactorizerLib.pipeline.postprocessing import label_volumes

    vb, va = label_volumes(before, geometry, task), label_volumes(after, geometry, task)
    labels = {name: {"value": v["value"], "before_ml": round(v["volume_ml"], 4),
                     "after_ml": round(va["labels"][name]["volume_ml"], 4),
                     "delta_ml": round(va["labels"][name]["volume_ml"] - v["volume_ml"], 4)}
              for name, v in vb["labels"].items()}
    ml = geometry.voxel_volume_ml()
    lesion_before, lesion_after = float((before > 0).sum()) * ml, float((after > 0).sum()) * ml
    counts = np.bincount(difference.ravel(), minlength=4)
    row = next((r for r in source.ranking_of(layer) if r["component"] == component), None)
    return {
        "format": FORMAT, "format_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "library_version": __version__,
        "source": str(source.folder.absolute()), "task": task.name, "device": device,
        "layer": layer, "component": component, "ranking": row,
        "lesion": {"before_ml": round(lesion_before, 4), "after_ml": round(lesion_after, 4),
                   "delta_ml": round(lesion_after - lesion_before, 4)},
        "labels": labels,
        "difference_voxels": {DIFFERENCE[v]: int(counts[v]) for v in (1, 2, 3)},
        "difference_labels": {str(v): name for v, name in DIFFERENCE.items()},
        "note": "segmentation with this NMF component left out of its layer's reconstruction, compared with the "
                "segmentation of the source run; everything else as recorded in its report.json",
    }


def _write_json_checked(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if json.loads(path.read_text(encoding="utf-8")) != data:
        raise UserError(f"writing {path.name} failed (it reads back different); free disk space or choose "
                        "another output folder")


def _read_labels(path: Path, reference) -> np.ndarray:
    import SimpleITK as sitk

    from LesionFactorizerLib.pipeline.geometry import Geometry

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise UserError(f"cannot read the segmentation {path} ({str(exc).strip().splitlines()[-1]}); segment "
                        "again") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or not Geometry.from_image(image).same_grid(reference.geometry):
        raise UserError(f"{path.name} is not on the grid of input {reference.name}; the result folder was changed "
                        "after the segmentation — segment again")
    return sitk.GetArrayFromImage(image).astype(np.uint8, copy=False)


def _write_labels(array: np.ndarray, like, path: Path, task=None) -> None:
    """``task``: the labels are the task's, so a .seg.nrrd gets its named segments."""
    import SimpleITK as sitk

    from LesionFactorizerLib.pipeline.io import write_image

    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8))
    image.CopyInformation(like)
    if path.name.endswith(".seg.nrrd"):
        from LesionFactorizerLib.pipeline.segnrrd import write_seg_nrrd

        write_seg_nrrd(image, path, task)
    else:
        write_image(image, path)
