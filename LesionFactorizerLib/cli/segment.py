"""``lesion-factorizer segment``: segment one case (DESIGN.md §4)."""

from __future__ import annotations

import argparse
import json
import sys

from LesionFactorizerLib.errors import UserError

NAME = "segment"
HELP = "segment one case: input images in, labels + report (+ NMF components) out"


def add_segment_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``segment`` and ``batch``."""
    from LesionFactorizerLib.pipeline.speed_presets import DEFAULT_SPEED_PRESET, SPEED_PRESET_HELP, SPEED_PRESETS

    parser.add_argument("--task", help="tumor, stroke or ms-new (default: the model's task)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME|PATH",
                        help="model name or .safetensors path; repeat for an ensemble (mean of logits); "
                             "default: the task's default model")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="auto picks CUDA, then MPS, then CPU; CUDA out-of-memory falls back to CPU")
    parser.add_argument("--preset", default=DEFAULT_SPEED_PRESET, choices=list(SPEED_PRESETS), help=SPEED_PRESET_HELP)
    parser.add_argument("--tta", action="store_true", default=None, help="mirror test-time augmentation")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="disable TTA (overrides --preset)")
    parser.add_argument("--nmf-iters", type=int, metavar="N", help="NMF (HALS) iterations at inference")
    parser.add_argument("--skip-nmf", metavar="LAYER,...", help="short-circuit these NMF layers "
                        "(encoder1..4, bridge, decoder4..1)")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap (default from --preset, 0.5)")
    parser.add_argument("--sw-batch-size", type=int, default=1, metavar="N", help="windows per forward pass")
    parser.add_argument("--components", action="store_true", help="write NMF component maps (Factorizer models)")
    parser.add_argument("--component-layers", metavar="LAYER,...", help="write only these layers' components "
                        "(implies --components)")
    parser.add_argument("--probabilities", action="store_true", help="also write probability maps")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: task/model)")
    parser.add_argument("--min-lesion-mm3", type=float, help="remove smaller lesions (default: task; ms-new 3)")
    parser.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd", "mha"],
                        help="image format of the outputs")
    parser.add_argument("--no-overview", dest="overview", action="store_false", help="skip overview.png")
    parser.add_argument("--progress", default="bar", choices=["bar", "jsonl", "none"],
                        help="bar (stderr), jsonl (one JSON event per line on stdout) or none")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results in the output folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", action="append", default=[], metavar="NAME=PATH",
                        help="an input image (NIfTI/NRRD/MHA file or DICOM series folder); PATH alone is "
                             "assigned by its file name (e.g. *flair*, *t1ce*)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder")
    add_segment_options(parser)


def split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_inputs(items: list[str], task_name: str | None, models: list[str]) -> dict[str, str]:
    """``NAME=PATH`` pairs, plus bare paths assigned by the task's file-name patterns."""
    from LesionFactorizerLib.tasks import get_task

    named, bare = {}, []
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name and "/" not in name and "\\" not in name:
            if name in named:
                raise UserError(f"input {name} is given twice; give each input once")
            named[name] = path
        else:
            bare.append(item)
    if bare:
        if not task_name and models:
            from LesionFactorizerLib.modelfile import find_model, read_metadata

            task_name = read_metadata(find_model(models[0]))["task"]
        if not task_name:
            raise UserError("give --task to assign inputs given without NAME= by their file names")
        task = get_task(task_name)
        matched = task.match_inputs(bare)
        unmatched = [b for b in bare if b not in matched.values()]
        if unmatched:
            raise UserError(f"cannot tell which input {unmatched[0]} is from its name; give it as NAME=PATH "
                            f"(accepted names: {', '.join(task.input_names)})")
        for name, path in matched.items():
            if name in named:
                raise UserError(f"input {name} is given twice; give each input once")
            named[name] = path
    return named


def options_from_args(args: argparse.Namespace, inputs: dict[str, str], output: str):
    from LesionFactorizerLib.pipeline.segment import SegmentOptions

    layers = split_list(args.component_layers)
    return SegmentOptions(
        inputs=inputs, output=output, task=args.task, models=list(args.model), device=args.device,
        preset=args.preset, tta=args.tta, nmf_iters=args.nmf_iters, skip_nmf=split_list(args.skip_nmf),
        overlap=args.overlap, sw_batch_size=args.sw_batch_size, components=args.components or bool(layers),
        component_layers=layers, probabilities=args.probabilities, threshold=args.threshold,
        min_lesion_mm3=args.min_lesion_mm3, format=args.format, overwrite=args.overwrite,
        overview=args.overview)


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.pipeline.progress import Progress, terminate_cleanly

    terminate_cleanly()
    progress = Progress(args.progress)
    with progress.errors_reported():
        from LesionFactorizerLib.pipeline.segment import segment_case

        inputs = parse_inputs(args.input, args.task, args.model)
        outputs = segment_case(options_from_args(args, inputs, args.output), progress)
    progress.done(outputs)
    if args.progress == "bar":
        print(f"results written to {outputs['dir']}", file=sys.stderr)
    elif args.progress == "none":
        print(json.dumps(outputs))
    return 0
