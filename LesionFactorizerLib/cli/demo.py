"""``lesion-factorizer demo``: all tasks on the bundled sample cases with the bundled demo models."""

from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = ("segment the bundled sample case of each task with its bundled demo model (offline) and "
        "print time, volumes, lesion counts and Dice against the sample's ground truth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LesionFactorizerLib.demo import DEFAULT_OUT, DEMO_TASKS
    from LesionFactorizerLib.core.settings import add_options

    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"results folder, one sub-folder per task (default: ./{DEFAULT_OUT})")
    parser.add_argument("--tasks", default=",".join(DEMO_TASKS), metavar="T,...",
                        help=f"comma-separated subset of {', '.join(DEMO_TASKS)} (default: all)")
    add_options(parser, ("device",))
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results in an --out folder that the demo did not write")


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.demo import format_summary, parse_tasks, run_demo

    tasks = parse_tasks(args.tasks)
    summary = run_demo(args.out, tasks, device=args.device, overwrite=args.overwrite,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_summary(summary))
    return 0
