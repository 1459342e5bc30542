"""Cohort throughput: ``lesion-factorizer batch`` (reading and writing overlapped with inference,
models loaded once) against one ``segment`` process per case, on the same BraTS-size cases.

    .venv/bin/python benchmarks/bench_batch.py                # 6 cases, 240×240×155 at 1 mm
    .venv/bin/python benchmarks/bench_batch.py --scale 0.5    # half the field of view per axis

The case and the random-weight model are ``bench_pipeline.py``'s (``synth_case``; the model preset's
network saved as a model file). Sides, run one after the other in the same sitting, ``--rounds``
times in alternating order so that a change in the machine's load touches both:

- ``batch``: one ``batch`` process over the N cases;
- ``batch --no-overlap``: the same process, one stage at a time (what the overlap alone buys);
- ``segment ×N``: N ``segment`` processes one after the other (what a shell loop does).

Printed: wall time, cases per hour, the batch's own summary line (per-case latency), peak RSS of the
batch process (``wait4``), the ratios, and the load average before and after.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import run_child, synth_case  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--scale", type=float, default=1.0, help="field-of-view scale (1.0 = 240×240×155)")
    p.add_argument("--preset", default="balanced", choices=["fast", "balanced", "best"])
    p.add_argument("--model-preset", default="swin-factorizer-brats")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="repeat the sides, alternating their order")
    p.add_argument("--no-sequential-batch", action="store_true", help="leave out batch --no-overlap")
    p.add_argument("--keep", metavar="DIR", help="keep cases, model and outputs in DIR")
    args = p.parse_args()

    import torch

    from LesionFactorizerLib import build_model
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file
    from LesionFactorizerLib.presets import PRESETS

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(REPO))
    load_before = os.getloadavg()
    print(f"# bench_batch: {args.cases} cases, scale {args.scale}, preset {args.preset}, {args.threads} threads, "
          f"load average {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f} on {os.cpu_count()} cores")
    first = synth_case(work, args.scale)
    cases = work / "cases"
    for n in range(args.cases):   # the same volumes in every case: equal work per case
        (cases / f"case{n}").mkdir(parents=True, exist_ok=True)
        for name, path in first.items():
            shutil.copyfile(path, cases / f"case{n}" / f"case{n}_{name}.nii.gz")
    torch.manual_seed(0)
    net = build_model(args.model_preset)
    model = work / "bench.safetensors"
    save_model_file(model, net, make_metadata("tumor", net.config, name="bench",
                                              patch_size=PRESETS[args.model_preset].patch_size,
                                              spacing=(1.0, 1.0, 1.0), description="random weights"))
    del net

    common = ["--model", str(model), "--device", "cpu", "--preset", args.preset, "--progress", "none", "--overwrite"]
    python = [sys.executable, "-m", "LesionFactorizerLib"]

    def batch(*extra):
        out = work / ("out_batch" + "".join(extra).replace("-", "_"))
        return run_child([*python, "batch", str(cases), "-o", str(out), *common, *extra], env)

    def segments():
        wall = 0.0
        for n in range(args.cases):
            folder = cases / f"case{n}"
            inputs = [f"-i{name}={folder / f'case{n}_{name}.nii.gz'}" for name in first]
            w, _, _, rc = run_child([*python, "segment", "-o", str(work / "out_segment" / f"case{n}"), *common,
                                     *inputs], env)
            if rc:
                return w, 0.0, "", rc
            wall += w
        return wall, 0.0, "", 0

    sides = {"batch": lambda: batch(), "segment ×N": segments}
    if not args.no_sequential_batch:
        sides["batch --no-overlap"] = lambda: batch("--no-overlap")
    walls: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            t = time.perf_counter()
            wall, peak, _, rc = sides[name]()
            if rc:
                print(f"{name} failed (exit {rc})")
                return rc
            walls[name].append(wall)
            rate = 3600 * args.cases / wall
            print(f"round {r + 1} {name:<20} {wall:7.1f} s  {rate:7.1f} cases/hour"
                  + (f"  peak RSS {peak / 1024:.2f} GiB" if peak else "")
                  + f"  (load {os.getloadavg()[0]:.1f}, {time.perf_counter() - t:.0f} s)")
    from LesionFactorizerLib.cli.batch import SUMMARY

    with open(work / "out_batch" / SUMMARY, newline="", encoding="utf-8") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    print(f"\nbatch per-case latency (summary.csv seconds, last round): {', '.join(f'{s:.1f}' for s in seconds)} s")
    best = {name: min(w) for name, w in walls.items()}
    for name in sides:
        if name != "batch":
            print(f"cases/hour batch / {name}: {best[name] / best['batch']:.2f} (best of {args.rounds} round(s) each)")
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
