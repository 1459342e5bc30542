"""One case, end to end (DESIGN.md §3): input files → labels, report, components, overview.

:func:`segment_case` is what the ``segment`` command, the ``batch`` command and the Slicer worker
run. Everything the user can get wrong is checked before any heavy work, and all outputs are
written into a temporary folder that only replaces the output folder's entries at the end.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.pipeline.io import IMAGE_FORMATS, AtomicOutput
from LesionFactorizerLib.pipeline.progress import Progress, Warnings
from LesionFactorizerLib.pipeline.speed_presets import DEFAULT_SPEED_PRESET, SPEED_PRESETS
from LesionFactorizerLib.tasks import POSTPROCESSING_KEYS, Task, get_task


@dataclass
class SegmentOptions:
    inputs: dict[str, str]
    output: str
    task: str | None = None
    models: list[str] = field(default_factory=list)
    device: str = "auto"
    preset: str = DEFAULT_SPEED_PRESET
    tta: bool | None = None
    nmf_iters: int | None = None
    skip_nmf: list[str] | None = None
    overlap: float | None = None
    sw_batch_size: int = 1
    components: bool = False
    component_layers: list[str] | None = None
    probabilities: bool = False
    threshold: float | None = None
    min_lesion_mm3: float | None = None
    format: str = "nii.gz"
    overwrite: bool = False
    overview: bool = True

    def resolved(self) -> dict[str, Any]:
        if self.preset not in SPEED_PRESETS:
            raise UserError(f"unknown preset {self.preset!r}; choose one of: {', '.join(SPEED_PRESETS)}")
        p = dict(SPEED_PRESETS[self.preset])
        for key in ("tta", "nmf_iters", "skip_nmf", "overlap"):
            if getattr(self, key) is not None:
                p[key] = getattr(self, key)
        if not 0.0 <= p["overlap"] < 1.0:
            raise UserError(f"--overlap must be in [0, 1), not {p['overlap']}")
        if p["nmf_iters"] is not None and int(p["nmf_iters"]) < 1:
            raise UserError(f"--nmf-iters must be at least 1, not {p['nmf_iters']}")
        if self.sw_batch_size < 1:
            raise UserError(f"--sw-batch-size must be at least 1, not {self.sw_batch_size}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise UserError(f"--threshold is a probability between 0 and 1 (exclusive), not {self.threshold}")
        if self.min_lesion_mm3 is not None and self.min_lesion_mm3 < 0:
            raise UserError(f"--min-lesion-mm3 must be 0 or more, not {self.min_lesion_mm3}")
        return p


def output_claims(fmt: str) -> list[str]:
    """Entries a run may write (any format), so stale results of another format also need --overwrite."""
    names = ["report.json", "lesions.csv", "overview.png", "components"]
    for ext in IMAGE_FORMATS.values():
        names += [f"segmentation{ext}", f"probabilities{ext}"]
    return names


def check_input_names(task: Task, given: dict[str, str], model_inputs: list[str]) -> None:
    unknown = [n for n in given if n not in task.input_names]
    if unknown:
        raise UserError(f"unknown input name(s) {', '.join(unknown)} for task {task.name!r}; accepted names: "
                        f"{', '.join(task.input_names)}")
    missing = [n for n in model_inputs if n not in given]
    if missing:
        raise UserError(f"missing input {', '.join(missing)} for task {task.name!r}; give it as --input "
                        f"{missing[0]}=PATH (accepted names: {', '.join(task.input_names)})")


def segment_case(opts: SegmentOptions, progress: Progress | None = None,
                 loaded: list | None = None) -> dict[str, Any]:
    """Run one case; returns the ``outputs`` dict (absolute paths). ``loaded``: models to reuse."""
    from LesionFactorizerLib import __version__
    from LesionFactorizerLib.modelfile import default_model, find_model, read_metadata

    progress = progress or Progress("none")
    timings: dict[str, float] = {}
    warnings = Warnings(progress)   # each warning reaches the user as it arises, and report.json
    t_start = time.monotonic()
    settings = opts.resolved()
    if opts.format not in IMAGE_FORMATS:
        raise UserError(f"unknown output format {opts.format!r}; choose one of: {', '.join(IMAGE_FORMATS)}")
    ext = IMAGE_FORMATS[opts.format]

    # -- cheap checks first: task, model metadata, input names, output folder ---------------------
    progress.stage("read", "checking inputs")
    if loaded:
        metas = [m.metadata for m in loaded]
        model_paths = [m.path for m in loaded]
    else:
        if opts.models:
            model_paths = [find_model(m) for m in opts.models]
        else:
            if not opts.task:
                raise UserError("give --task (tumor, stroke or ms-new) or --model")
            model_paths = [default_model(get_task(opts.task).name)]
        metas = [read_metadata(p) for p in model_paths]
    task = get_task(opts.task or metas[0]["task"])
    for path, meta in zip(model_paths, metas):
        if meta["task"] != task.name:
            raise UserError(f"model {Path(path).name} is for task {meta['task']!r}, not {task.name!r}; choose a "
                            f"{task.name} model (see `lesion-factorizer models list`)")
    first = metas[0]
    for path, meta in zip(model_paths[1:], metas[1:]):
        check_ensemble_member(first, meta, Path(model_paths[0]).name, Path(path).name)
    model_inputs = list(first["inputs"])
    check_input_names(task, opts.inputs, model_inputs)
    from LesionFactorizerLib.pipeline.postprocessing import resolve_mode

    channels, activation = list(first["outputs"]["channels"]), first["outputs"]["activation"]
    post = {**_task_post(task), **{k: v for k, v in first.get("postprocessing", {}).items()
                                   if k in POSTPROCESSING_KEYS}}
    if opts.threshold is not None:
        post["threshold"] = opts.threshold
    if opts.min_lesion_mm3 is not None:
        post["min_lesion_mm3"] = opts.min_lesion_mm3
    post["mode"] = resolve_mode(post["mode"], activation, task)   # the rule actually applied, as reported
    unused = [n for n in opts.inputs if n not in model_inputs]
    if unused:
        warnings.append(f"input(s) {', '.join(unused)} are not used by the model and were ignored")
    out = AtomicOutput(opts.output, output_claims(opts.format), opts.overwrite)
    out.check()
    if opts.device not in ("auto", "cpu"):
        from LesionFactorizerLib.pipeline.inference import resolve_device

        resolve_device(opts.device)   # an unavailable GPU is a usage error, before any work

    # -- read and validate images ---------------------------------------------------------------
    from LesionFactorizerLib.pipeline.io import align_to_reference, load_inputs, write_image

    t = time.monotonic()
    inputs = load_inputs({n: opts.inputs[n] for n in model_inputs}, model_inputs, warnings)
    ref_name = task.reference if task.reference in model_inputs else model_inputs[0]
    reference = next(i for i in inputs if i.name == ref_name)
    align_to_reference(inputs, reference, warnings)
    timings["read"] = time.monotonic() - t

    # -- preprocess --------------------------------------------------------------------------------
    from LesionFactorizerLib.pipeline.guards import check_finite_logits, check_memory
    from LesionFactorizerLib.pipeline.preprocessing import prepare, to_reference

    progress.stage("preprocess", "cropping, normalising, resampling")
    t = time.monotonic()
    pre = first["preprocessing"]
    spacing = pre.get("spacing")
    check_memory(reference.geometry.size, reference.geometry.spacing, spacing, len(inputs), len(channels),
                 f"input {reference.name} ({reference.path})")
    align = 16
    prep = prepare([i.image for i in inputs], reference.geometry, spacing, align,
                   crop_foreground=pre.get("crop_foreground", True),
                   normalization=pre.get("normalization", "zscore-nonzero"))
    patch_np = [int(p) for p in reversed(pre["patch_size"])]
    roi = tuple(max(align, min((p // align) * align, s)) for p, s in zip(patch_np, prep.array.shape[1:]))
    timings["preprocess"] = time.monotonic() - t

    # -- models ------------------------------------------------------------------------------------
    from LesionFactorizerLib.modelfile import load_model_file
    from LesionFactorizerLib.pipeline.inference import apply_nmf_settings, run_inference

    progress.stage("model", "loading model")
    t = time.monotonic()
    if not loaded:
        loaded = [load_model_file(p) for p in model_paths]
    models = [m.model for m in loaded]
    apply_nmf_settings(models, settings["nmf_iters"], settings["skip_nmf"])
    has_components = any(getattr(m, "has_components", False) for m in models)
    components_note = None
    want_components = bool(opts.components or opts.component_layers)
    if want_components and not has_components:
        components_note = (f"model {loaded[0].name} is not a Factorizer and has no NMF components; "
                           "no component maps were written")
        warnings.append(components_note)
        want_components = False
    if want_components and opts.component_layers:
        comp_model = next(m for m in models if getattr(m, "has_components", False))
        names = [n for n, _ in comp_model.component_layers]
        bad = [n for n in opts.component_layers if n not in names]
        if bad:
            raise UserError(f"unknown component layer(s) {', '.join(bad)}; layers are: {', '.join(names)}")
    timings["model"] = time.monotonic() - t

    # -- inference ---------------------------------------------------------------------------------
    progress.stage("inference", f"{len(models)} model(s), {'TTA' if settings['tta'] else 'no TTA'}")
    t = time.monotonic()
    result = run_inference(models, prep.array, roi, overlap=settings["overlap"], align=align, tta=settings["tta"],
                           sw_batch_size=opts.sw_batch_size, device=opts.device,
                           component_layers=opts.component_layers, want_components=want_components,
                           on_window=lambda d, n: progress.update(d / n))
    if want_components and settings["skip_nmf"]:
        wanted = opts.component_layers or [n for n, _ in next(
            m for m in models if getattr(m, "has_components", False)).component_layers]
        skipped = [n for n in wanted if n in settings["skip_nmf"]]
        if skipped:
            result.warnings.append(f"NMF layer(s) {', '.join(skipped)} were short-circuited (--skip-nmf or "
                                   f"--preset {opts.preset}) and have no component maps")
    for w in result.warnings:
        warnings.append(w)
    check_finite_logits(result.logits, [m.name for m in loaded])
    timings["inference"] = time.monotonic() - t
    del prep.array

    # -- post-process on the reference grid --------------------------------------------------------
    from LesionFactorizerLib.pipeline.postprocessing import (activate, label_volumes, lesion_table,
                                                             remove_small_lesions, to_labels)

    progress.stage("postprocess", "labels and lesions")
    t = time.monotonic()
    probs_box = activate(result.logits, activation)
    fill = [1.0 if (activation == "softmax" and ch == "background") else 0.0 for ch in channels]
    probs = to_reference(prep, probs_box, fill)
    del probs_box, result.logits
    labels = to_labels(probs, task, channels, activation, float(post["threshold"]), post["mode"])
    geometry = reference.geometry
    found = remove_small_lesions(labels, geometry, float(post["min_lesion_mm3"]), int(post["connectivity"]))
    volumes = label_volumes(labels, geometry, task)
    lesions = lesion_table(labels, geometry, task, found)
    removed = found.removed
    del found   # a full-size int32 volume
    timings["postprocess"] = time.monotonic() - t

    # -- write everything into the temporary folder, then move into place --------------------------
    import SimpleITK as sitk

    from LesionFactorizerLib.pipeline.components import write_components
    from LesionFactorizerLib.pipeline.report import write_json, write_lesions_csv, write_overview

    final = out.final
    with out as tmp:
        labels_img = sitk.GetImageFromArray(labels)
        labels_img.CopyInformation(reference.image)
        del labels
        written: dict[str, str] = {"segmentation": f"segmentation{ext}"}
        components_entries = None
        comp_image = None
        if want_components:
            progress.stage("components", "writing NMF component maps")
            t = time.monotonic()
            order = [n for n, _ in next(m for m in models if getattr(m, "has_components", False)).component_layers]
            components_entries = write_components(prep, result.components, result.strides, tmp / "components", order)
            if components_entries:
                show = next((e for e in components_entries if e["layer"] == "decoder1"), components_entries[0])
                comp_image = (show["layer"], sitk.ReadImage(str(tmp / "components" / show["file"])))
                written["components"] = "components"
                written["components_index"] = "components/components.json"
            timings["components"] = time.monotonic() - t
        result.components.clear()
        progress.stage("write", "writing results")
        t = time.monotonic()
        write_image(labels_img, tmp / written["segmentation"])
        probability_channels = None
        if opts.probabilities:
            keep = [c for c, ch in enumerate(channels) if ch != "background"]
            probability_channels = [channels[c] for c in keep]
            # one channel image at a time, so at most one extra full-size copy exists alongside probs
            parts = []
            for c in keep:
                parts.append(sitk.GetImageFromArray(probs[c]))
            del probs
            img = parts[0] if len(parts) == 1 else sitk.Compose(parts)
            del parts
            img.CopyInformation(reference.image)
            written["probabilities"] = f"probabilities{ext}"
            write_image(img, tmp / written["probabilities"])
            del img
        else:
            del probs
        write_lesions_csv(tmp / "lesions.csv", lesions, [lb.name for lb in task.labels])
        written["lesions"] = "lesions.csv"
        if opts.overview:
            write_overview(tmp / "overview.png", inputs, labels_img, task, comp_image)
            written["overview"] = "overview.png"
        timings["write"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t_start
        report = {
            "format": "lesion-factorizer-report", "format_version": 1,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "library_version": __version__,
            "task": task.name, "task_title": task.title,
            "model": _model_entry(loaded[0]),
            "models": [_model_entry(m) for m in loaded],
            "inputs": [i.describe() for i in inputs],
            "reference_input": reference.name,
            "geometry": geometry.as_dict(),
            "coordinate_system": "LPS (RAS centroids also given)",
            "settings": {"preset": opts.preset, "device": result.device, "tta": settings["tta"],
                         "overlap": settings["overlap"], "nmf_iters": settings["nmf_iters"],
                         "skip_nmf": settings["skip_nmf"], "sw_batch_size": opts.sw_batch_size,
                         "roi": list(reversed(roi)), "passes": result.passes, **post,
                         "model_spacing": spacing},
            "preprocessing": {"crop_start": list(prep.crop_start), "crop_size": list(prep.crop_size),
                              "model_grid": prep.model_grid.as_dict(), "resampled": not prep.identity,
                              "normalisation": prep.normalisation},
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "volumes_ml": {name: v["volume_ml"] for name, v in volumes["labels"].items()},
            "labels": {name: {**v, **_label_extra(task, v["value"])} for name, v in volumes["labels"].items()},
            "regions": volumes["regions"],
            "lesion_count": len(lesions),
            "removed_small_lesions": removed,
            "lesions": lesions,
            "components": components_entries,
            "outputs": dict(written, report="report.json"),
            "warnings": list(warnings),
        }
        if probability_channels is not None:
            report["probability_channels"] = probability_channels   # file order of probabilities.<ext>
        if components_note:
            report["components_note"] = components_note
        write_json(tmp / "report.json", report)
        out.commit()
    outputs = {k: str(final / v) for k, v in written.items()}
    outputs["report"] = str(final / "report.json")
    outputs["dir"] = str(final)
    return outputs


def check_ensemble_member(first: dict[str, Any], meta: dict[str, Any], first_name: str, name: str) -> None:
    """An ensemble averages logits computed on one prepared array and turns them into labels with
    one rule, so its members must agree on everything that shapes either (else a member would
    silently run with the first member's spacing, patch or normalisation)."""
    def differs(a: Any, b: Any) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return not math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) != len(b) or any(differs(x, y) for x, y in zip(a, b))
        return a != b

    checks = [("inputs", first["inputs"], meta["inputs"]), ("outputs", first["outputs"], meta["outputs"])]
    pre_a, pre_b = first.get("preprocessing", {}), meta.get("preprocessing", {})
    for key in sorted(set(pre_a) | set(pre_b)):
        checks.append((f"preprocessing.{key}", pre_a.get(key), pre_b.get(key)))
    post_a, post_b = first.get("postprocessing", {}), meta.get("postprocessing", {})
    for key in POSTPROCESSING_KEYS:
        checks.append((f"postprocessing.{key}", post_a.get(key), post_b.get(key)))
    for what, a, b in checks:
        if differs(a, b):
            raise UserError(f"ensemble members must share {what}: {name} has {b!r} but {first_name} has {a!r}; "
                            "ensemble only models trained with the same preprocessing and outputs, or run them "
                            "separately")


def _task_post(task: Task) -> dict[str, Any]:
    return {key: getattr(task.postprocessing, key) for key in POSTPROCESSING_KEYS}


def _label_extra(task: Task, value: int) -> dict[str, Any]:
    lb = task.label(value)
    return {"color": list(lb.color), "terminology": lb.terminology_entry()}


def _model_entry(m) -> dict[str, Any]:
    meta = m.metadata
    return {"name": m.name, "path": str(m.path), "sha256": m.sha256,
            "architecture": meta["architecture"]["name"], "description": meta.get("description", ""),
            "license": meta.get("license", ""), "weights_sha256": meta["weights"]["sha256"]}
