"""``lesion-factorizer segment``: segment one case (data path: docs/ARCHITECTURE.md)."""

from __future__ import annotations

import argparse
import json
import sys

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.reportspec import FOLDER_KEY

NAME = "segment"
HELP = "segment one case: input images in, labels + report (+ NMF components) out"


def add_segment_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``segment`` and ``batch``: the segment settings' own definition."""
    from LesionFactorizerLib.core.settings import add_options

    add_options(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", "-i", action="append", default=[], metavar="NAME=PATH",
                        help="an input image (NIfTI/NRRD/MHA file or DICOM series folder); PATH alone is "
                             "assigned by its file name (e.g. *flair*, *t1ce*)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder")
    add_segment_options(parser)


def parse_inputs(items: list[str], task=None) -> dict[str, str]:
    """``NAME=PATH`` pairs, plus bare paths assigned by ``task``'s file-name patterns (None: only pairs)."""
    named, bare = {}, []
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name and "/" not in name and "\\" not in name:
            if name in named:
                raise UserError(f"input {name} is given twice; give each input once")
            named[name] = path
        else:
            bare.append(item)
    if bare and task is None:
        raise UserError(f"--input {bare[0]!r}: give NAME=PATH, e.g. --input flair=/data/flair.nii.gz")
    if bare:
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


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.pipeline.progress import Progress, terminate_cleanly

    terminate_cleanly()
    progress = Progress(args.progress)
    with progress.errors_reported():
        from LesionFactorizerLib.pipeline.segment import Segmenter
        from LesionFactorizerLib.core.settings import SegmentSettings

        segmenter = Segmenter(SegmentSettings.from_args(args))
        inputs = parse_inputs(args.input, segmenter.task)
        outputs = segmenter.segment(inputs, args.output, args.overwrite, progress).outputs
    progress.done(outputs)
    if args.progress == "bar":
        print(f"results written to {outputs[FOLDER_KEY]}", file=sys.stderr)
    elif args.progress == "none":
        print(json.dumps(outputs))
    return 0
