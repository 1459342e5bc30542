"""``lesion-factorizer export CHECKPOINT|RUN_DIR --output FILE``: training checkpoint → model file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "export"
HELP = "turn a training checkpoint (or a run folder's best/last checkpoint) into a model file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a *.ckpt.safetensors file, or a run folder (runs/NAME/foldK)")
    parser.add_argument("--output", "-o", required=True, help="model file to write (*.safetensors)")
    parser.add_argument("--which", choices=("best", "last"), default="best",
                        help="checkpoint of a run folder to export (default: best validation Dice)")
    parser.add_argument("--name", help="model name stored in the file (default: the file name)")
    parser.add_argument("--description", help="one-paragraph description shown by `models info`")
    parser.add_argument("--license", default="Apache-2.0", help="licence of the weights (default Apache-2.0)")
    parser.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    parser.add_argument("--thresholds", metavar="REGION=P,...",
                        help="tumor: per-region thresholds of the hierarchical post-processing (thesis 8.3.6), e.g. "
                        "WT=0.5,TC=0.4,ET=0.45; recorded in the model file (regions not named use the task's threshold)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def parse_thresholds(text: str) -> dict:
    """``WT=0.5,TC=0.4`` → {"WT": 0.5, "TC": 0.4}; the regions and ranges are checked with the model's spec."""
    from LesionFactorizerLib.core.errors import UserError

    out = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        region, _, value = item.partition("=")
        try:
            out[region.strip()] = float(value)
        except ValueError:
            raise UserError(f"--thresholds {text!r}: expected REGION=PROBABILITY,..., e.g. WT=0.5,TC=0.4,ET=0.45") \
                from None
    return out


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.training.checkpoint_io import SUFFIX
    from LesionFactorizerLib.training.export import export_checkpoint

    src = Path(args.checkpoint)
    if src.is_dir():
        ckpt = src / "checkpoints" / f"{args.which}{SUFFIX}"
        if args.which == "best" and not ckpt.is_file():
            ckpt = src / "checkpoints" / f"last{SUFFIX}"  # runs without validation keep only 'last'
        if not ckpt.is_file():
            raise UserError(f"{src} holds no {args.which} checkpoint; is it a run folder (runs/NAME/foldK)?")
    else:
        ckpt = src
    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise UserError(f"--output {out}: model files end in .safetensors")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    post = {"mode": "hierarchical", "thresholds": parse_thresholds(args.thresholds)} if args.thresholds else None
    res = export_checkpoint(ckpt, out, name=args.name, description=args.description, license=args.license,
                            half=args.half, postprocessing=post)
    t = res["metadata"]["training"]
    print(json.dumps({"path": res["path"], "sha256": res["sha256"], "task": res["metadata"]["task"],
                      "steps": t["steps"], "fold": t["fold"], "validation": t["validation"]}))
    return 0
