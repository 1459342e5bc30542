"""Time and Dice of the ``--preset`` variants on the bundled samples and held-out phantoms (issue 24).

    python benchmarks/bench_speed_presets.py                      # 3 samples + 6 phantoms per task
    python benchmarks/bench_speed_presets.py --tasks stroke --n 2

Variants (all without TTA; each case runs through the real ``Segmenter``, files in and out):

- ``balanced``: the model's trained NMF settings, overlap 0.5 (the default preset);
- ``fast``: the ``fast`` preset as it is defined now (``speed_presets.SPEED_PRESETS``);
- ``iters2-skip-dec1``: 2 NMF iterations, overlap 0.25, decoder1's NMF short-circuited, NMF(X) := X
  (the thesis's ablation, ``--skip-nmf decoder1``);
- ``iters2-drop-dec1``: the same, but decoder1's whole Wrapped-NMF branch left out
  (what ``fast`` did before issue 24; set on the loaded network, ``set_nmf(drop_branch=…)``);
- ``iters2``: 2 NMF iterations, overlap 0.25, no layer short-circuited.

Held-out phantoms: ``--seed`` (default 7300) at each demo model's spacing; the demo models were
trained on seed 100 and checkpoint-selected on seed 9000, the samples use seeds 0/13/1. Variants
run one after another on each case, so a shared machine's load drifts alike for all of them; the
first case is run once before timing (model load, allocator warm-up). Seconds are the whole
``segment`` call (read, predict, write), median over cases.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LesionFactorizerLib.core.errors import UserError  # noqa: E402
from LesionFactorizerLib.core.reportspec import OUTPUTS  # noqa: E402

VARIANTS: dict[str, dict] = {
    "balanced": {"preset": "balanced"},
    "fast": {"preset": "fast"},
    "iters2-skip-dec1": {"preset": "balanced", "nmf_iters": 2, "overlap": 0.25, "skip_nmf": ["decoder1"]},
    "iters2-drop-dec1": {"preset": "balanced", "nmf_iters": 2, "overlap": 0.25, "drop_branch": ["decoder1"]},
    "iters2": {"preset": "balanced", "nmf_iters": 2, "overlap": 0.25},
}


def mean_dice(seg: str, label: str, task: str) -> float:
    from LesionFactorizerLib.evaluation.cohort import evaluate_files

    row = evaluate_files(seg, label, task)
    values = [v for k, v in row.items() if k.startswith("dice_") and v == v]
    return sum(values) / len(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="tumor,stroke,ms-new")
    parser.add_argument("--n", type=int, default=6, help="held-out phantoms per task")
    parser.add_argument("--seed", type=int, default=7300, help="phantom seed (not 100: training)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="no untimed first run (when only Dice matters)")
    parser.add_argument("--work", help="keep phantoms and outputs here, reusing phantoms already there "
                        "(default: a temporary folder)")
    args = parser.parse_args()
    if args.seed == 100:
        parser.error("seed 100 made the demo models' training phantoms; choose another")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_confidence import held_out_case
    from LesionFactorizerLib.demo import bundled_demo_model
    from LesionFactorizerLib.modelfile import read_spec
    from LesionFactorizerLib.phantoms.samples import sample_case
    from LesionFactorizerLib.pipeline.segment import Segmenter, SegmentSettings

    variants = [v.strip() for v in args.variants.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-presets-"))
    print(f"held-out seed {args.seed}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{'task':7s} {'cases':>5s}  " + "  ".join(f"{v:>22s}" for v in variants))
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        model = bundled_demo_model(task)
        spacing = float(read_spec(model).preprocessing.spacing[0])
        sample = sample_case(task)
        cases = [({n: sample["inputs"][n] for n in read_spec(model).inputs}, sample["label"], "sample")]
        for i in range(args.n):
            folder = work / task / f"case{i}"
            if (folder / "label.nii.gz").is_file():   # written last by held_out_case
                inputs = {n: str(folder / f"{n}.nii.gz") for n in read_spec(model).inputs}
                label = folder / "label.nii.gz"
            else:
                inputs, label = held_out_case(task, args.seed, i, spacing, folder)
            cases.append((inputs, str(label), f"phantom{i}"))
        segmenters = {}
        for v in variants:
            options = {k: x for k, x in VARIANTS[v].items() if k != "drop_branch"}
            segmenters[v] = Segmenter(SegmentSettings(task=task, models=[str(model)], device="cpu", tta=False,
                                                      overview=False, overwrite=True, **options))
            for loaded in segmenters[v].models():   # kept across cases: the Segmenter resets only skip
                loaded.model.set_nmf(drop_branch=VARIANTS[v].get("drop_branch", []))
        if args.warmup:
            segmenters[variants[0]].segment(cases[0][0], work / task / "warmup", overwrite=True)
        rows: dict[str, list[tuple[str, float, float]]] = {v: [] for v in variants}
        for inputs, label, name in cases:
            inputs = {n: p for n, p in inputs.items() if n in read_spec(model).inputs}
            for v in variants:
                t0 = time.perf_counter()
                try:
                    result = segmenters[v].segment(inputs, work / task / name / v, overwrite=True)
                except UserError as exc:   # e.g. the registration gate: the same for every variant
                    print(f"  {task} {name}: refused, left out for every variant: {exc}", flush=True)
                    break
                seconds = time.perf_counter() - t0
                rows[v].append((name, seconds, mean_dice(result.outputs[OUTPUTS.segmentation.key], label, task)))
                print(f"  {task} {name} {v}: {seconds:.1f} s, mean Dice {rows[v][-1][2]:.4f}", flush=True)
        for group, pick in (("sample", lambda r: r[0] == "sample"), ("phantoms", lambda r: r[0] != "sample")):
            cells = []
            for v in variants:
                sel = [r for r in rows[v] if pick(r)]
                cells.append(f"{statistics.median(r[1] for r in sel):6.2f} s  Dice {statistics.mean(r[2] for r in sel):.4f}")
            print(f"{task:7s} {group:>8s}  " + "  ".join(f"{c:>22s}" for c in cells), flush=True)
    if not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
