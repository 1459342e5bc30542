"""``lesion-factorizer counterfactual``: the segmentation of an earlier run without one NMF component."""

from __future__ import annotations

import argparse
import json
import sys

from LesionFactorizerLib.core.reportspec import FOLDER_KEY

NAME = "counterfactual"
HELP = ("drop one NMF component of an earlier `segment --components` run and show how the lesion changes "
        "(changed segmentation, difference labelmap, volume change per label)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LesionFactorizerLib.core.settings import add_options

    parser.add_argument("result_dir", metavar="RESULT_DIR", help="output folder of a `segment` run (has report.json)")
    parser.add_argument("--layer", help="NMF layer, e.g. decoder1 (default: the layer of the component with the "
                        "largest effect when `segment --effects` ranked them, else of the top-ranked component)")
    parser.add_argument("--component", type=int, metavar="K",
                        help="component number in that layer, from 0 (default: the layer's largest effect, else "
                             "its top-ranked component)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--keep", dest="mode", action="store_const", const="keep", default="drop",
                       help="keep only this component in its layer instead of dropping it")
    group.add_argument("--whole-layer", dest="mode", action="store_const", const="skip",
                       help="short-circuit the whole --layer (as --skip-nmf) instead of dropping one component")
    parser.add_argument("--output", "-o", metavar="DIR",
                        help="output folder (default: RESULT_DIR/counterfactual/<layer>-<component>, "
                             "<layer>-keep-<component> or <layer>-skipped)")
    parser.add_argument("--input", "-i", action="append", default=[], metavar="NAME=PATH",
                        help="where an input of the run is now, if it moved (must be the same file)")
    add_options(parser, ("device", "progress"))
    parser.add_argument("--no-picture", dest="picture", action="store_false",
                        help="do not draw difference.png (e.g. when a viewer shows the difference)")
    parser.add_argument("--trust-inputs", action="store_true",
                        help="run even when report.json records no checksum of an input or model (an older or "
                             "hand-made report): the files are used as found, with a warning")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier counterfactual in the output folder")


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.pipeline.progress import Progress, terminate_cleanly

    terminate_cleanly()
    progress = Progress(args.progress)
    with progress.errors_reported():
        from LesionFactorizerLib.cli.segment import parse_inputs
        from LesionFactorizerLib.pipeline.groups import DropComponent
        from LesionFactorizerLib.pipeline.segment import Segmenter

        segmenter = Segmenter.from_report(args.result_dir, DropComponent(args.layer, args.component, args.mode),
                                          parse_inputs(args.input), args.device, args.trust_inputs, args.picture)
        cf = segmenter.counterfactual
        result = segmenter.segment(cf.source.inputs, args.output or cf.default_output(), args.overwrite, progress)
    outputs, summary = result.outputs, result.report   # the report of a counterfactual: counterfactual.json
    progress.done(outputs)
    if args.progress == "bar":
        from LesionFactorizerLib.pipeline.groups import describe

        why = {"effect": " (the largest effect of `segment --effects`)",
               "overlap": " (the overlap ranking's top: run `segment --effects` to rank by effect)"}
        print(f"{describe(summary['layer'], summary['component'], summary['mode'])}"
              f"{why.get(summary['chosen_by'], '')}: lesion {summary['lesion']['before_ml']:.2f} -> "
              f"{summary['lesion']['after_ml']:.2f} mL ({summary['lesion']['delta_ml']:+.2f} mL); "
              f"written to {outputs[FOLDER_KEY]}", file=sys.stderr)
    elif args.progress == "none":
        print(json.dumps(outputs))
    return 0
