"""``lesion-factorizer phantom``: write synthetic lesion cases in a public data-set layout."""

from __future__ import annotations

import argparse
import sys
import time

from LesionFactorizerLib.core.errors import UserError

NAME = "phantom"
HELP = (
    "Generate synthetic brain-lesion cases (realistic MRI on the MNI152 anatomy, with labels) in the "
    "task's public layout: BraTS 2021 (tumor), ISLES'22 BIDS (stroke), MSSEG-2 (ms-new); tumor also "
    "in the MSD Task01 layout (--layout msd-task01)."
)


# Every accepted range in one place: option → (lowest, highest).
LIMITS = {"--n": (1, 100000), "--seed": (0, 2**32 - 1), "--start": (0, 99999), "--spacing": (0.5, 8.0),
          "--size": (8, 512)}
# Highest case index each public layout can name (phantoms.layouts.case_id): BraTS numbers five
# digits from 0, ISLES'22 four digits from 1, MSSEG-2 three digits from 1.
LAST_INDEX = {"tumor": 99999, "stroke": 9998, "ms-new": 998}


def whole_number(option: str):
    lo, hi = LIMITS[option]

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {value}")
        return value
    return parse


def one_or_three(option: str, cast):
    """X or X,Y,Z → (x, y, z) within LIMITS[option]."""
    lo, hi = LIMITS[option]

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) not in (1, 3):
            raise argparse.ArgumentTypeError(f"takes one value or three comma-separated values X,Y,Z, got {text!r}")
        try:
            nums = [cast(p) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be numbers like 2 or 1,1,3, got {text!r}") from None
        if not all(lo <= v <= hi for v in nums):
            raise argparse.ArgumentTypeError(f"values must be between {lo} and {hi}, got {text!r}")
        return tuple(nums * 3 if len(nums) == 1 else nums)
    return parse


def _one_line_error(message: str) -> None:
    """Bad option values end like every other user mistake: one ``error:`` line, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LesionFactorizerLib.core.settings import TASK_NAMES

    parser.error = _one_line_error   # type: ignore[method-assign]  (no usage block before the message)
    parser.add_argument("--task", required=True, help=TASK_NAMES)
    parser.add_argument("--n", type=whole_number("--n"), default=1, help="number of cases (default 1)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=whole_number("--seed"), default=0,
                        help="random seed; same seed → identical cases (default 0)")
    parser.add_argument("--start", type=whole_number("--start"), default=0,
                        help="index of the first case, to extend a data set (default 0)")
    parser.add_argument(
        "--spacing",
        type=one_or_three("--spacing", float),
        default=None,
        help="voxel size in mm: one value or X,Y,Z (default 1 mm; 2 mm for stroke). "
        "Larger values give small volumes for quick tests, e.g. --spacing 4",
    )
    parser.add_argument(
        "--size",
        type=one_or_three("--size", int),
        default=None,
        help="grid size in voxels: one value or X,Y,Z, centred on the brain (default: the brain's "
        "bounding box at --spacing), e.g. --size 240,240,155 for a BraTS-sized grid",
    )
    parser.add_argument("--layout", choices=("public", "msd-task01"), default="public",
                        help="public: the task's challenge layout (default); msd-task01: tumor cases as the "
                        "Medical Segmentation Decathlon's Task01_BrainTumour (imagesTr/, labelsTr/, "
                        "dataset.json), read by the chapter-7 BraTS training configs")
    parser.add_argument("--overwrite", action="store_true", help="replace cases that already exist")
    parser.add_argument("--preview", action="store_true", help="also write PNG montages to OUT/previews/")


def check_case_range(task: str, start: int, n: int) -> None:
    """Cases start … start+n−1 must have names in the task's public layout."""
    last = LAST_INDEX[task]
    if start + n - 1 > last:
        raise UserError(f"--start {start} with --n {n} goes past case index {last}, the last one the {task} "
                        f"layout can name; use a smaller --start or fewer cases")


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.phantoms import TASKS, write_dataset

    if args.task not in TASKS:
        raise UserError(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}")
    n, start, spacing, size = args.n, args.start, args.spacing, args.size
    check_case_range(args.task, start, n)

    t0 = time.perf_counter()

    def report(i: int, rec: dict) -> None:
        print(f"case {i}: {rec['parameters']['seconds']:.1f} s, grid {'x'.join(map(str, rec['shape_xyz']))}", file=sys.stderr)

    if getattr(args, "layout", "public") == "msd-task01":
        from LesionFactorizerLib.phantoms.msd import write_msd_task01

        if args.task != "tumor":
            raise UserError(f"--layout msd-task01 holds brain tumours; it cannot hold {args.task} cases")
        if args.preview:
            raise UserError("--preview is not available with --layout msd-task01; write the public layout for previews")
        write_msd_task01(n, args.out, args.seed, spacing=spacing, size=size, start=start,
                         overwrite=args.overwrite, on_case=report)
    else:
        write_dataset(args.task, n, args.out, args.seed, spacing=spacing, size=size, start=start,
                      overwrite=args.overwrite, preview=args.preview, on_case=report)
    print(f"wrote {n} {args.task} case(s) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
