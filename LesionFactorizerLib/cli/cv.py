"""``lesion-factorizer cv CONFIG``: k-fold cross-validation (every fold in turn)."""

from __future__ import annotations

import argparse
import json

NAME = "cv"
HELP = ("k-fold cross-validation of an experiment: trains every fold, exports each fold's model and writes "
        "cv-summary.json/.csv (per-fold and mean validation scores) beside them")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LesionFactorizerLib.training.cli_args import add_common

    add_common(parser)
    parser.add_argument("--folds", help="comma-separated subset of folds (default: all)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.training.cli_args import overrides_from
    from LesionFactorizerLib.training.config import load_config
    from LesionFactorizerLib.training.cv_outputs import export_folds
    from LesionFactorizerLib.training.run import cross_validate, run_dir_for

    cfg = load_config(args.config, overrides_from(args))
    folds = None
    if args.folds:
        try:
            folds = [int(f) for f in args.folds.split(",")]
        except ValueError:
            raise UserError(f"--folds {args.folds!r}: give numbers like 0,1,2") from None
    results = cross_validate(cfg, folds=folds, resume=args.resume,
                             progress=not args.no_progress and cfg.trainer.progress_bar)
    stopped = any(r.stopped for r in results)   # by Ctrl+C / SIGTERM: --resume continues that fold
    scores = {}
    for k in folds if folds is not None else range(cfg.data.folds):
        path = run_dir_for(cfg, k) / "result.json"
        if path.is_file():
            scores[k] = json.loads(path.read_text(encoding="utf-8")).get("best_val_dice")
    valid = [v for v in scores.values() if v is not None]
    summary = export_folds(cfg, list(scores))
    print(json.dumps({"folds": scores, "mean_val_dice": float(np.mean(valid)) if valid else None,
                      "sd_val_dice": float(np.std(valid, ddof=1)) if len(valid) > 1 else None, "stopped": stopped,
                      "models": [r["model"] for r in summary["folds"]], "summary": summary["path"]}))
    return 1 if stopped else 0
