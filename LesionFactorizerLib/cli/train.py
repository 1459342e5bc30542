"""``lesion-factorizer train CONFIG``: train one fold of an experiment (or all data)."""

from __future__ import annotations

import argparse
import json

NAME = "train"
HELP = "train a model from a YAML experiment config (one fold, or all data)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LesionFactorizerLib.training.cli_args import add_common

    add_common(parser)
    parser.add_argument("--fold", default="0",
                        help="validation fold 0..k-1 (default 0), or 'all' to train on every case without validation")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="start from this training checkpoint's network weights (*.ckpt.safetensors) with "
                        "a new optimiser and schedule: a further stage of an earlier run")


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.training.cli_args import overrides_from
    from LesionFactorizerLib.training.config import load_config

    cfg = load_config(args.config, overrides_from(args))
    if args.fold == "all":
        fold = None
    else:
        try:
            fold = int(args.fold)
        except ValueError:
            raise UserError(f"--fold {args.fold!r}: give a fold number or 'all'") from None
    from LesionFactorizerLib.training.run import train

    result = train(cfg, fold, resume=args.resume, progress=not args.no_progress and cfg.trainer.progress_bar,
                   init=args.init)
    if not result.is_global_zero:
        return 0  # one summary per run, not one per DDP process
    print(json.dumps({"run_dir": str(result.run_dir), "best": str(result.best) if result.best else None,
                      "last": str(result.last), "best_val_dice": result.best_score, "steps": result.steps,
                      "seconds": round(result.seconds, 1), "stopped": result.stopped}))
    return 1 if result.stopped else 0   # stopped early: a script must not take the run as finished
