"""``lesion-factorizer phantom``: write synthetic lesion cases in a public data-set layout."""

from __future__ import annotations

import argparse
import sys
import time

from LesionFactorizerLib.errors import UserError

NAME = "phantom"
HELP = (
    "Generate synthetic brain-lesion cases (realistic MRI on the MNI152 anatomy, with labels) in the "
    "task's public layout: BraTS 2021 (tumor), ISLES'22 BIDS (stroke), MSSEG-2 (ms-new)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Values are parsed in run() so that every mistake gets the same one-line `error:` message.
    parser.add_argument("--task", required=True, help="tumor, stroke or ms-new")
    parser.add_argument("--n", default="1", help="number of cases (default 1)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", default="0", help="random seed; same seed → identical cases (default 0)")
    parser.add_argument("--start", default="0", help="index of the first case, to extend a data set (default 0)")
    parser.add_argument(
        "--spacing",
        default=None,
        help="voxel size in mm: one value or X,Y,Z (default 1 mm; 2 mm for stroke). "
        "Larger values give small volumes for quick tests, e.g. --spacing 4",
    )
    parser.add_argument(
        "--size",
        default=None,
        help="grid size in voxels: one value or X,Y,Z, centred on the brain (default: the brain's "
        "bounding box at --spacing), e.g. --size 240,240,155 for a BraTS-sized grid",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace cases that already exist")
    parser.add_argument("--preview", action="store_true", help="also write PNG montages to OUT/previews/")


def _int(value: str, option: str, lo: int, hi: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{option} must be a whole number, got {value!r}") from None
    if not lo <= v <= hi:
        raise UserError(f"{option} must be between {lo} and {hi}, got {v}")
    return v


def _triple(value: str | None, option: str, cast, lo, hi):
    if value is None:
        return None
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) not in (1, 3):
        raise UserError(f"{option} takes one value or three comma-separated values X,Y,Z, got {value!r}")
    try:
        nums = [cast(p) for p in parts]
    except ValueError:
        raise UserError(f"{option} must be numbers like 2 or 1,1,3, got {value!r}") from None
    if not all(lo <= v <= hi for v in nums):
        raise UserError(f"{option} values must be between {lo} and {hi}, got {value!r}")
    return tuple(nums * 3 if len(nums) == 1 else nums)


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.phantoms import TASKS, write_dataset

    if args.task not in TASKS:
        raise UserError(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}")
    n = _int(args.n, "--n", 1, 100000)
    seed = _int(args.seed, "--seed", 0, 2**32 - 1)
    start = _int(args.start, "--start", 0, 999)  # public ids have 3–5 digits
    if start + n - 1 > (99999 if args.task == "tumor" else 999 if args.task == "ms-new" else 9998):
        raise UserError("--start + --n exceeds the case numbers this layout can name; use fewer cases")
    spacing = _triple(args.spacing, "--spacing", float, 0.5, 8.0)
    size = _triple(args.size, "--size", int, 8, 512)

    t0 = time.perf_counter()

    def report(i: int, rec: dict) -> None:
        print(f"case {i}: {rec['parameters']['seconds']:.1f} s, grid {'x'.join(map(str, rec['shape_xyz']))}", file=sys.stderr)

    write_dataset(args.task, n, args.out, seed, spacing=spacing, size=size, start=start,
                  overwrite=args.overwrite, preview=args.preview, on_case=report)
    print(f"wrote {n} {args.task} case(s) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
