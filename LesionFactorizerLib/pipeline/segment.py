"""One run, end to end: read → prepare → predict → postprocess → write.

A :class:`Segmenter` holds what stays the same across the cases of a run: the model specs (parsed
once), the output spec (label rule resolved once), the settings, and the loaded networks (loaded
on the first case, then reused). :meth:`Segmenter.segment` runs one case through the stages in the
order the data flows, each returning a typed value; :func:`segment_case` is the one-case form that
the ``segment`` command and the Slicer worker run, ``batch`` keeps one Segmenter for its cohort.

Everything the user can get wrong is checked before any heavy work, and all outputs are written
into a temporary folder that only replaces the output folder's entries at the end.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.modelfile import LoadedModel
from LesionFactorizerLib.core.outputspec import OutputSpec
from LesionFactorizerLib.pipeline.groups import DropComponent
from LesionFactorizerLib.pipeline.io import IMAGE_FORMATS, AtomicOutput, InputImage, map_suffix
from LesionFactorizerLib.pipeline.preprocessing import Prepared
from LesionFactorizerLib.pipeline.progress import Progress, Warnings
from LesionFactorizerLib.core.settings import TASK_NAMES, SegmentSettings
from LesionFactorizerLib.core.reportspec import COUNTERFACTUAL_FOLDER, FOLDER_KEY, OUTPUTS, Report
from LesionFactorizerLib.core.spec import ModelSpec
from LesionFactorizerLib.core.tasks import Task, get_task


# ------------------------------------------------------------------------------------------------
# What each stage returns
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """``read``: the checked inputs, all on the reference input's grid."""

    inputs: list[InputImage]
    reference: InputImage
    registration: dict | None = None   # report.json["registration"] (pipeline/registration.py)
    uncovered: np.ndarray | None = None   # reference voxels where another session's input has no data


@dataclass
class Prediction:
    """``predict``: mean logits on the prepared box and the NMF component maps."""

    logits: np.ndarray
    components: dict[str, np.ndarray]
    strides: dict[str, int]
    device: str
    passes: int
    sw_batch_size: int
    backend: str
    threads: int | None
    votes: np.ndarray | None = None   # bit p: pass p labelled the voxel (pipeline/confidence.py)
    window_nmf: str = "not used"      # native kernel or PyTorch (nn/native.status)
    window_plan: dict = field(default_factory=dict)   # report.json settings.window_plan (WindowPlan.record)


@dataclass
class Segmentation:
    """``postprocess``: labels and probabilities on the reference grid, and what was measured."""

    labels: np.ndarray          # uint8 (K, J, I)
    probs: np.ndarray | None    # float32 (C, K, J, I); None when not written
    volumes: dict
    lesions: list[dict]
    removed: int
    uncertainty: np.ndarray | None = None   # float32 (K, J, I) entropy in bits; None when not written
    confidence: dict | None = None          # report.json "confidence": what the lesion measures rest on


@dataclass
class Result:
    """``segment``: the report written to ``report.json`` and the outputs' absolute paths (keys of
    ``reportspec.OUTPUTS``, and ``FOLDER_KEY``: the output folder). In counterfactual mode the report
    is counterfactual.json's content (a dict) and the keys are ``COUNTERFACTUAL_OUTPUTS``'."""

    report: Report | dict[str, Any]
    outputs: dict[str, str]


class RunLog:
    """What every stage of one run reports to: progress, warnings (each shown as it arises, and
    recorded), stage timings and the clocks they started from."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.warnings = Warnings(progress)
        self.timings: dict[str, float] = {}
        self.t_start, self.cpu_start = time.monotonic(), time.process_time()


@dataclass
class Staged:
    """One case between :meth:`Segmenter.begin`, :meth:`~Segmenter.infer` and :meth:`~Segmenter.finish`."""

    log: RunLog
    out: AtomicOutput
    case: Case
    prep: Prepared
    roi: tuple[int, int, int]
    components_note: str | None = None
    prediction: Prediction | None = None
    seg: Segmentation | None = None
    effects: dict[str, dict] | None = None


def output_claims() -> list[str]:
    """Entries a run may write (any format), so stale results of another format also need --overwrite;
    counterfactual/ too: derived from this run's segmentation, so a new run must not keep the old ones."""
    return [*OUTPUTS.claims(IMAGE_FORMATS.values()), COUNTERFACTUAL_FOLDER]


class Segmenter:
    """Models + spec + settings of one run; :meth:`segment` runs one case. Made by
    :meth:`from_report`, it is the counterfactual of an earlier run (``counterfactual`` set)."""

    counterfactual = None   # pipeline/counterfactual.Counterfactual in counterfactual mode

    def __init__(self, settings: SegmentSettings, loaded: list[LoadedModel] | None = None):
        """Cheap and torch-free unless ``loaded`` is given: finds the models, parses their specs,
        resolves the label rule and checks the settings. ``loaded``: models to reuse."""
        from LesionFactorizerLib.modelfile import default_model, find_model, read_spec

        self.opts = opts = settings
        self.settings = settings.check()   # the speed settings in effect
        if loaded:
            self.paths = [m.path for m in loaded]
            self.specs = [m.spec for m in loaded]
        else:
            if opts.models:
                self.paths = [find_model(m) for m in opts.models]
            elif opts.task:
                self.paths = [default_model(get_task(opts.task).name)]
            else:
                raise UserError(f"give --task ({TASK_NAMES}) or --model")
            self.specs = [read_spec(p) for p in self.paths]
        self.loaded = loaded
        self.task: Task = get_task(opts.task) if opts.task else self.specs[0].task
        for path, spec in zip(self.paths, self.specs):
            if spec.task.name != self.task.name:
                raise UserError(f"model {Path(path).name} is for task {spec.task.name!r}, not {self.task.name!r}; "
                                f"choose a {self.task.name} model (see `lesion-factorizer models list`)")
        self.spec: ModelSpec = self.specs[0]
        for path, spec in zip(self.paths[1:], self.specs[1:]):
            check_ensemble_member(self.spec, spec, Path(self.paths[0]).name, Path(path).name)
        self.output = OutputSpec.resolve(self.task, self.spec.outputs.activation, self.spec.outputs.channels,
                                         self.spec.postprocessing.given()).with_overrides(
            opts.threshold, opts.min_lesion_mm3, opts.postprocess)
        if opts.format == "seg.nrrd":   # a missing package is said before any work
            from LesionFactorizerLib.pipeline import segnrrd

            segnrrd.require()
        if opts.dicom_seg:
            from LesionFactorizerLib.pipeline import dicomseg

            dicomseg.require()
        if opts.device not in ("auto", "cpu"):
            from LesionFactorizerLib.pipeline.inference import resolve_device

            resolve_device(opts.device)   # an unavailable GPU is a usage error, before any work

    # -- the models, loaded on first use --------------------------------------------------------
    def models(self) -> list[LoadedModel]:
        if not self.loaded:
            from LesionFactorizerLib.modelfile import load_model_file

            self.loaded = [load_model_file(p) for p in self.paths]
        return self.loaded

    @property
    def stride(self) -> int:
        """Total downsampling of the networks: the prepared box's start and size are multiples of
        it, so every layer's grid in the box coincides with that layer's grid over the whole volume."""
        return max(int(getattr(m.model, "stride", 1)) for m in self.models())

    @property
    def reference_name(self) -> str:
        """The input whose grid the outputs take: the task's reference if the model reads it, else
        the model's first input."""
        inputs = list(self.spec.inputs)
        return self.task.reference if self.task.reference in inputs else inputs[0]

    @classmethod
    def from_report(cls, folder: str | Path, change: DropComponent | None = None, inputs: dict[str, str] | None = None,
                    device: str = "auto", trust_inputs: bool = False, picture: bool = True) -> Segmenter:
        """Counterfactual mode: the run recorded in ``folder`` (its settings, model files and inputs,
        each checked against its recorded SHA-256) with ``change`` to one NMF layer
        (``pipeline/counterfactual.py``); :meth:`segment` then writes the counterfactual. ``inputs``:
        where recorded inputs are now; ``trust_inputs``: run on files the report has no checksum of;
        ``picture=False``: no difference.png."""
        from LesionFactorizerLib.pipeline.counterfactual import Counterfactual

        mode = Counterfactual.of(folder, change or DropComponent(), inputs, trust_inputs, picture)
        segmenter = cls(mode.settings(device))
        segmenter.counterfactual = mode
        return segmenter

    # -- one case -------------------------------------------------------------------------------
    def segment(self, inputs: dict[str, str], output: str | Path, overwrite: bool = False,
                progress: Progress | None = None) -> Result:
        """One case: read → model → preprocess → inference → postprocess (→ effects) → write, each
        stage timed and reported; in counterfactual mode the recorded files are checked on the way
        and the last stage writes the counterfactual."""
        staged = self.begin(inputs, output, overwrite, progress)
        self.infer(staged)
        return self.finish(staged)

    # The three parts of :meth:`segment`, in order. ``batch`` runs them on different cases at once
    # (cli/batch_pipeline.py): ``begin`` and ``finish`` never touch the networks, ``infer`` is the only
    # part that runs them (or changes their NMF settings).
    def begin(self, inputs: dict[str, str], output: str | Path, overwrite: bool = False,
              progress: Progress | None = None) -> Staged:
        """Check and read the inputs, load the models (first case), prepare the network input."""
        log = RunLog(progress or Progress("none"))
        progress, warnings, timings, cf = log.progress, log.warnings, log.timings, self.counterfactual

        progress.stage("read", "checking inputs")
        warnings.extend(cf.notes if cf else ())
        self.check_inputs(inputs, warnings)
        out = AtomicOutput(output, cf.claims() if cf else output_claims(), overwrite)
        if cf:
            cf.check_output(out.final)
        out.check()
        t = time.monotonic()
        case = self.read(inputs, warnings)
        if cf:
            cf.check_inputs(case)
        timings["read"] = time.monotonic() - t

        with progress.timed("model", "loading model", timings):
            if cf:
                cf.check_model_files(self.paths)
            self.models()
        with progress.timed("preprocess", "cropping, normalising, resampling", timings):
            prep, roi = self.prepare(case)
        return Staged(log, out, case, prep, roi)

    def infer(self, staged: Staged) -> None:
        """The networks' part: NMF settings (and the counterfactual's checks of the loaded models),
        prediction, and the effects (which rerun the networks on the case's labels) when asked."""
        log, cf, prep, case = staged.log, self.counterfactual, staged.prep, staged.case
        progress, warnings, timings = log.progress, log.warnings, log.timings
        t = time.monotonic()
        staged.components_note = self.prepare_models(warnings)
        if cf:
            cf.check_models(self)
        elif self.want_components and self.opts.effects:
            from LesionFactorizerLib.pipeline.effects import component_costs, effect_layers, stage_weight

            layers = effect_layers(self, self.opts.component_layers)
            progress.replan({"effects": stage_weight(component_costs(self.component_model, layers))})
        timings["model"] = timings.get("model", 0.0) + time.monotonic() - t
        array = prep.array if self.want_components and self.opts.effects else None   # kept for the effects
        what = cf.describe() if cf else f"{len(self.loaded)} model(s), {'TTA' if self.settings['tta'] else 'no TTA'}"
        with progress.timed("inference", what, timings), (cf.variant(self) if cf else contextlib.nullcontext()):
            staged.prediction = self.predict(prep, staged.roi, warnings, progress)
        if array is not None:
            with progress.timed("postprocess", "labels and lesions", timings):
                staged.seg = self.postprocess(prep, staged.prediction, case)
            staged.effects = self.effects(prep, case, staged.prediction, staged.seg, array, log)
            del array

    def finish(self, staged: Staged) -> Result:
        """Labels and lesions (unless ``infer`` made them), the report, and the outputs committed."""
        log, cf = staged.log, self.counterfactual
        case, prep, prediction = staged.case, staged.prep, staged.prediction
        if staged.seg is None:
            with log.progress.timed("postprocess", "labels and lesions", log.timings):
                staged.seg = self.postprocess(prep, prediction, case)
        if cf:
            return Result(*cf.write(self, staged.out, case, prediction, staged.seg, log))
        report = self.report(case, prep, staged.roi, prediction, staged.seg, staged.components_note)
        return self.write(staged.out, case, prep, prediction, staged.seg, report, log.warnings, log.timings,
                          log.t_start, log.progress, staged.effects)

    def effects(self, prep: Prepared, case: Case, prediction: Prediction, seg: Segmentation, array: np.ndarray,
                log: RunLog) -> dict[str, dict]:
        """Each NMF component's effect on the lesion (``--effects``, ``pipeline/effects.py``)."""
        from LesionFactorizerLib.pipeline.effects import EffectInputs, compute_effects

        with log.progress.timed("effects", "each NMF component's effect on the lesion", log.timings):
            plan = prediction.window_plan   # (i, j, k) order in the report, like roi's reverse
            windows = (tuple(reversed(plan["window"])), tuple(reversed(plan["step"])))
            return compute_effects(self, prep, case, EffectInputs(array, *windows, prediction.sw_batch_size,
                                                                  seg.labels),
                                   self.opts.component_layers, lambda f, m: log.progress.update(f, m))

    def report(self, case: Case, prep: Prepared, roi: tuple[int, int, int], prediction: Prediction,
               seg: Segmentation, components_note: str | None) -> Report:
        """report.json's entries of the case (``write`` adds the format, timings, outputs, warnings)."""
        # the settings section: every setting, with the values this run resolved (speed preset, device,
        # window batch, post-processing) in place of the requested ones, so a re-run repeats this run
        in_effect = {**self.settings, "device": prediction.device, "sw_batch_size": prediction.sw_batch_size}
        post = self.output.settings()
        return Report(
            task=self.task.name, task_title=self.task.title,
            model=_model_entry(self.loaded[0]),
            models=[_model_entry(m) for m in self.loaded],
            inputs=[i.describe() for i in case.inputs],
            reference_input=case.reference.name,
            geometry=case.reference.geometry.as_dict(),
            coordinate_system="LPS (RAS centroids also given)",
            settings={**self.opts.to_report({**in_effect, **post}), "window_plan": prediction.window_plan,
                      "backend_ran": prediction.backend, "window_nmf": prediction.window_nmf,
                      "threads": prediction.threads, "roi": list(reversed(roi)), "passes": prediction.passes,
                      **post, "model_spacing": _plain(self.spec.preprocessing.spacing)},
            preprocessing={"crop_start": list(prep.crop_start), "crop_size": list(prep.crop_size),
                           "model_grid": prep.model_grid.as_dict(), "resampled": not prep.identity,
                           "normalization": prep.normalization},
            volumes_ml={name: v["volume_ml"] for name, v in seg.volumes["labels"].items()},
            labels={name: {**v, **_label_extra(self.task, v["value"])} for name, v in seg.volumes["labels"].items()},
            regions=seg.volumes["regions"],
            lesion_count=len(seg.lesions),
            removed_small_lesions=seg.removed,
            lesions=seg.lesions,
            confidence=seg.confidence,
            components_note=components_note or None,
            registration=case.registration,
        )

    def check_inputs(self, given: dict[str, str], warnings: list[str]) -> None:
        task, model_inputs = self.task, self.spec.inputs
        unknown = [n for n in given if n not in task.input_names]
        if unknown:
            raise UserError(f"unknown input name(s) {', '.join(unknown)} for task {task.name!r}; accepted names: "
                            f"{', '.join(task.input_names)}")
        missing = [n for n in model_inputs if n not in given]
        if missing:
            raise UserError(f"missing input {', '.join(missing)} for task {task.name!r}; give it as --input "
                            f"{missing[0]}=PATH (accepted names: {', '.join(task.input_names)})")
        if self.opts.dicom_seg:
            from LesionFactorizerLib.pipeline.dicomseg import check_reference_is_dicom

            check_reference_is_dicom(given[self.reference_name], self.reference_name)
        unused = [n for n in given if n not in model_inputs]
        if unused:
            warnings.append(f"input(s) {', '.join(unused)} are not used by the model and were ignored")

    def read(self, given: dict[str, str], warnings: list[str]) -> Case:
        from LesionFactorizerLib.pipeline.guards import check_memory
        from LesionFactorizerLib.pipeline.io import align_to_reference, load_inputs, read_header
        from LesionFactorizerLib.pipeline.registration import register_inputs

        order = list(self.spec.inputs)
        ref_path = given[self.reference_name]
        header = read_header(ref_path, self.reference_name)   # the case's size, before any voxel is read
        if header is not None and all(math.isfinite(v) and v > 0 for v in header.spacing[:3]):   # else refused below
            check_memory(header.size[:3], header.spacing[:3], _plain(self.spec.preprocessing.spacing), len(order),
                         len(self.spec.outputs.channels), f"input {self.reference_name} ({ref_path})")
        inputs = load_inputs({n: given[n] for n in order}, order, warnings)
        reference = next(i for i in inputs if i.name == self.reference_name)
        registration, registered, uncovered = register_inputs(inputs, reference, self.task, self.opts.register,
                                                              warnings)
        align_to_reference([i for i in inputs if i.name not in registered], reference, warnings)
        return Case(inputs, reference, registration, uncovered)

    def prepare_models(self, warnings: list[str]) -> str | None:
        """Load the networks (first case only), apply the NMF settings, check the component
        request; returns the note recorded when components were asked of a model without them."""
        from LesionFactorizerLib.pipeline.inference import apply_nmf_settings
        from LesionFactorizerLib.core.settings import check_layers

        models = [m.model for m in self.models()]
        for model in models:
            if getattr(model, "has_components", False):
                check_layers(self.settings["skip_nmf"], self.opts.component_layers,
                             [n for n, _ in model.component_layers])
        apply_nmf_settings(models, self.settings["nmf_iters"], self.settings["skip_nmf"])
        self.component_model = next((m for m in models if getattr(m, "has_components", False)), None)
        self.want_components = bool(self.opts.components or self.opts.component_layers or self.opts.effects)
        if self.want_components and self.component_model is None:
            self.want_components = False
            note = (f"model {self.loaded[0].name} is not a Factorizer and has no NMF components; "
                    "no component maps were written")
            warnings.append(note)
            return note
        return None

    def prepare(self, case: Case) -> tuple[Prepared, tuple[int, int, int]]:
        """The network's input array, and the sliding-window size (numpy axis order)."""
        from LesionFactorizerLib.pipeline.preprocessing import prepare

        pre, align = self.spec.preprocessing, self.stride
        prep = prepare([i.image for i in case.inputs], case.reference.geometry, _plain(pre.spacing), align,
                       crop_foreground=pre.crop_foreground, normalization=pre.normalization)
        patch = [int(p) for p in reversed(pre.patch_size)]
        roi = tuple(max(align, min((p // align) * align, s)) for p, s in zip(patch, prep.array.shape[1:]))
        return prep, roi

    def predict(self, prep: Prepared, roi: tuple[int, int, int], warnings: list[str],
                progress: Progress) -> Prediction:
        from LesionFactorizerLib.pipeline.confidence import pass_foreground
        from LesionFactorizerLib.pipeline.guards import check_finite_logits
        from LesionFactorizerLib.pipeline.inference import run_inference
        from LesionFactorizerLib.pipeline.window_plan import make_plan

        opts, settings = self.opts, self.settings
        models = [m.model for m in self.loaded]
        plan = make_plan(settings["windows"], models, tuple(prep.array.shape[1:]), roi, settings["overlap"],
                         self.stride)
        result = run_inference(models, prep.array, plan.roi, interval=plan.interval, overlap=settings["overlap"],
                               align=self.stride, tta=settings["tta"], sw_batch_size=opts.sw_batch_size,
                               device=opts.device, component_layers=opts.component_layers,
                               want_components=self.want_components, on_window=lambda d, n: progress.update(d / n),
                               foreground=pass_foreground(self.output),
                               backend=opts.backend, on_message=lambda m: progress.update(0.0, m, force=True),
                               average_probabilities=self.output.activation if self.output.mode == "hierarchical"
                               and len(self.loaded) > 1 else None)
        if self.want_components and settings["skip_nmf"]:
            wanted = opts.component_layers or [n for n, _ in self.component_model.component_layers]
            skipped = [n for n in wanted if n in settings["skip_nmf"]]
            if skipped:
                result.warnings.append(f"NMF layer(s) {', '.join(skipped)} were short-circuited (--skip-nmf or "
                                       f"--preset {opts.preset}) and have no component maps")
        warnings.extend(result.warnings)
        check_finite_logits(result.logits, [m.name for m in self.loaded])
        prep.array = None   # the network input is no longer needed; free it before the full-size maps
        return Prediction(result.logits, result.components, result.strides, result.device, result.passes,
                          result.sw_batch_size, result.backend, result.threads, result.votes,
                          window_nmf=result.window_nmf, window_plan=plan.record())

    def postprocess(self, prep: Prepared, prediction: Prediction, case: Case) -> Segmentation:
        from LesionFactorizerLib.pipeline.confidence import ConfidenceMaps, foreground_probability, votes_to_reference
        from LesionFactorizerLib.pipeline.postprocessing import label_volumes, lesion_table

        rule = self.output
        geometry = case.reference.geometry
        labels, probs, found = self.labels_of(prep, prediction.logits, case)
        prediction.logits = None
        votes = votes_to_reference(prep, prediction.votes) if prediction.votes is not None else None
        prediction.votes = None
        conf = ConfidenceMaps(foreground_probability(probs, rule), votes, prediction.passes)
        box_center = np.asarray(prep.crop_start, dtype=float) + (np.asarray(prep.crop_size, dtype=float) - 1) / 2
        lesions = lesion_table(labels, geometry, self.task, found, confidence=conf,
                               center_lps=prep.model_grid.index_to_physical(box_center))
        return Segmentation(labels, probs if self.opts.probabilities else None,
                            label_volumes(labels, geometry, self.task), lesions, found.removed,
                            conf.entropy_map() if self.opts.uncertainty else None, conf.summary())

    def labels_of(self, prep: Prepared, logits: np.ndarray, case: Case):
        """Mean logits on the prepared box → labels and probabilities on the reference grid, small
        lesions removed (and what was removed): the labels of a run (also each component's in
        ``pipeline/effects.py``)."""
        from LesionFactorizerLib.pipeline.postprocessing import activate, remove_small_lesions
        from LesionFactorizerLib.pipeline.preprocessing import to_reference

        rule = self.output
        probs = to_reference(prep, activate(logits, rule.activation), rule.outside_fill)
        if case.uncovered is not None:   # no baseline there: nothing can be called new (registration.py)
            for c, fill in enumerate(rule.outside_fill):
                probs[c][case.uncovered] = fill
        labels = rule.to_labels(probs)
        found = remove_small_lesions(labels, case.reference.geometry, float(rule.min_lesion_mm3),
                                     int(rule.connectivity))
        return labels, probs, found

    def write(self, out: AtomicOutput, case: Case, prep: Prepared, prediction: Prediction, seg: Segmentation,
              report: Report, warnings: list[str], timings: dict[str, float], t_start: float,
              progress: Progress, effects: dict[str, dict] | None = None) -> Result:
        """Everything into the temporary folder, then moved into place; the report comes last."""
        import SimpleITK as sitk

        from LesionFactorizerLib import __version__
        from LesionFactorizerLib.pipeline.components import write_components
        from LesionFactorizerLib.pipeline.effects import best_effect
        from LesionFactorizerLib.pipeline.io import write_image
        from LesionFactorizerLib.pipeline.ranking import best_component, model_grid_masks
        from LesionFactorizerLib.pipeline.report import write_json, write_lesions_csv, write_overview

        opts, ext, map_ext = self.opts, IMAGE_FORMATS[self.opts.format], map_suffix(self.opts.format)
        written: dict[str, str] = {OUTPUTS.segmentation.key: OUTPUTS.segmentation.file_name(ext)}
        with out as tmp:
            labels_img = sitk.GetImageFromArray(seg.labels)
            labels_img.CopyInformation(case.reference.image)
            seg.labels = None
            entries, shown = None, None
            if self.want_components:
                progress.stage("components", "writing NMF component maps")
                t = time.monotonic()
                order = [n for n, _ in self.component_model.component_layers]
                masks = model_grid_masks(labels_img, [i.image for i in case.inputs], prep.model_grid)
                entries, shown = write_components(prep, prediction.components, prediction.strides,
                                                  tmp / OUTPUTS.components.name, order, show="decoder1", masks=masks,
                                                  effects=effects)
                del masks
                if entries and "ranking" in entries[0]:
                    report.components_best = best_component(entries)
                if effects is not None:
                    report.components_best_effect = best_effect(effects)
                if entries:
                    for o in (OUTPUTS.components, OUTPUTS.components_index):
                        written[o.key] = o.name
                timings["components"] = time.monotonic() - t
            prediction.components.clear()
            progress.stage("write", "writing results")
            t = time.monotonic()
            if opts.format == "seg.nrrd":
                from LesionFactorizerLib.pipeline.segnrrd import write_seg_nrrd

                write_seg_nrrd(labels_img, tmp / written[OUTPUTS.segmentation.key], self.task)
            else:
                write_image(labels_img, tmp / written[OUTPUTS.segmentation.key])
            if opts.dicom_seg:
                from LesionFactorizerLib.pipeline.dicomseg import write_case_dicom_seg

                report.dicom_seg = write_case_dicom_seg(labels_img, case.reference, self.task, self.loaded,
                                                        tmp, __version__)
                written[OUTPUTS.dicom_seg.key] = OUTPUTS.dicom_seg.name
            if seg.probs is not None:
                channels = self.output.channels
                keep = [channels.index(c) for c in self.output.probability_channels]
                # each channel is copied into its own image, then the full-size array is released
                parts = [sitk.GetImageFromArray(seg.probs[c]) for c in keep]
                seg.probs = None
                img = parts[0] if len(parts) == 1 else sitk.Compose(parts)
                del parts
                img.CopyInformation(case.reference.image)
                written[OUTPUTS.probabilities.key] = OUTPUTS.probabilities.file_name(map_ext=map_ext)
                write_image(img, tmp / written[OUTPUTS.probabilities.key])
                del img
                report.probability_channels = self.output.probability_channels   # file order
            if seg.uncertainty is not None:
                img = sitk.GetImageFromArray(seg.uncertainty)
                seg.uncertainty = None
                img.CopyInformation(case.reference.image)
                written[OUTPUTS.uncertainty.key] = OUTPUTS.uncertainty.file_name(map_ext=map_ext)
                write_image(img, tmp / written[OUTPUTS.uncertainty.key])
                del img
            write_lesions_csv(tmp / OUTPUTS.lesions.name, report.lesions, [lb.name for lb in self.task.labels])
            written[OUTPUTS.lesions.key] = OUTPUTS.lesions.name
            if opts.overview:
                write_overview(tmp / OUTPUTS.overview.name, case.inputs, labels_img, self.task, shown)
                written[OUTPUTS.overview.key] = OUTPUTS.overview.name
            timings["write"] = time.monotonic() - t
            timings["total"] = time.monotonic() - t_start
            written[OUTPUTS.report.key] = OUTPUTS.report.name
            report.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            report.library_version = __version__
            report.timings_s = {k: round(v, 3) for k, v in timings.items()}
            report.components = entries
            report.outputs = dict(written)
            report.warnings = list(warnings)
            write_json(tmp / OUTPUTS.report.name, report.to_json())
            out.commit()
        outputs = {k: str(out.final / v) for k, v in written.items()}
        outputs[FOLDER_KEY] = str(out.final)
        return Result(report, outputs)


def segment_case(inputs: dict[str, str], output: str | Path, settings: SegmentSettings,
                 progress: Progress | None = None, loaded: list[LoadedModel] | None = None) -> Result:
    """Run one case; returns its :class:`Result` (the report, and the outputs' absolute paths)."""
    return Segmenter(settings, loaded).segment(inputs, output, settings.overwrite, progress)


def run_counterfactual(folder: str | Path, layer: str | None = None, component: int | None = None,
                       output: str | Path | None = None, inputs: dict[str, str] | None = None,
                       device: str = "auto", overwrite: bool = False, progress=None,
                       picture: bool = True, trust_inputs: bool = False, mode: str = "drop") -> dict[str, str]:
    """Segment the case of the run in ``folder`` again with one change (``mode``, ``groups.MODES``:
    ``drop`` leaves ``component`` out of ``layer``, ``keep`` keeps only it, ``skip`` short-circuits
    the whole layer) through ``Segmenter.from_report``; returns the outputs' absolute paths
    (``dir``: the output folder). ``picture=False`` skips difference.png (Slicer shows the
    difference itself). ``trust_inputs``: run on inputs and models the report records no checksum
    of (with a warning)."""
    segmenter = Segmenter.from_report(folder, DropComponent(layer, component, mode), inputs, device, trust_inputs,
                                      picture)
    cf = segmenter.counterfactual
    return segmenter.segment(cf.source.inputs, output or cf.default_output(), overwrite, progress).outputs


def check_ensemble_member(first: ModelSpec, other: ModelSpec, first_name: str, name: str) -> None:
    """An ensemble averages logits computed on one prepared array and turns them into labels with
    one rule, so its members must agree on everything that shapes either (else a member would
    silently run with the first member's spacing, patch or normalization)."""
    def differs(a: Any, b: Any) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return not math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) != len(b) or any(differs(x, y) for x, y in zip(a, b))
        return a != b

    checks = [("inputs", first.inputs, other.inputs), ("outputs", first.outputs, other.outputs)]
    for part in ("preprocessing", "postprocessing"):
        a, b = asdict(getattr(first, part)), asdict(getattr(other, part))
        checks += [(f"{part}.{key}", a[key], b[key]) for key in a]
    for what, a, b in checks:
        if differs(a, b):
            raise UserError(f"ensemble members must share {what}: {name} has {_plain(b)!r} but {first_name} has "
                            f"{_plain(a)!r}; ensemble only models trained with the same preprocessing and outputs, "
                            "or run them separately")


def _plain(value: Any) -> Any:
    """Tuples as the lists the model file and report.json spell them."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


def _label_extra(task: Task, value: int) -> dict[str, Any]:
    lb = task.label(value)
    return {"color": list(lb.color), "terminology": lb.terminology_entry()}


def _model_entry(m: LoadedModel) -> dict[str, Any]:
    spec = m.spec
    return {"name": m.name, "path": os.path.abspath(m.path), "sha256": m.sha256, "architecture": spec.architecture.name,
            "description": spec.provenance.description, "license": spec.provenance.license,
            "weights_sha256": spec.weights.sha256}
