"""Build the bundled demo models (Resources/Models/demo-<task>.safetensors) from scratch on a CPU.

    python training/demo_models.py                      # all three tasks, about 45 min on 2 cores
    python training/demo_models.py --tasks stroke       # one task
    python training/demo_models.py --steps data,train   # only some steps

Steps, per task (each skips what its output already holds, so an interrupted build resumes):

1. ``data``  — synthetic training phantoms (32 cases, seed 100) and held-out phantoms (5 cases,
   seed 9000: no case in common with training, nor with the bundled sample cases) with
   ``lesion-factorizer phantom`` at the demo model's spacing.
2. ``train`` — ``lesion-factorizer train training/configs/demo-<task>.yaml --fold 0`` (a reduced-
   width Swin Factorizer, widths 8-128; fold 0 keeps validation Dice for picking the checkpoint).
3. ``card``  — export the best checkpoint with fp16 weights, score it on the held-out phantoms
   through the real inference pipeline, and write the final model file whose description is the
   model card (synthetic training data, demonstration only, held-out scores, how to train on
   real data); the scores are also stored under ``training.held_out``.

Torch runs single-threaded in the training subprocess: on a small shared machine, two threads
fighting other processes made steps ten times slower than one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("tumor", "stroke", "ms-new")
SPACING_MM = {"tumor": 3.0, "stroke": 2.0, "ms-new": 2.0}
TRAIN_CASES, TRAIN_SEED = 32, 100
TEST_CASES, TEST_SEED = 5, 9000
REAL_DATA = {   # (bundled config, data folder, note)
    "tumor": ("swin-factorizer-brats", "/path/to/BraTS2021_TrainingData",
              " (an MSD Task01 folder needs --set data.format=msd-task01)"),
    "stroke": ("swin-factorizer-isles", "/path/to/ISLES-2022", ""),
    "ms-new": ("resunet-msseg2", "/path/to/MSSEG-2/training",
               " (for a Factorizer add --set model.preset=swin-factorizer-isles)"),
}
LAYOUT = {"tumor": "brats", "stroke": "isles22", "ms-new": "msseg2"}


def cli(*args: str, threads: int | None = None) -> None:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "LesionFactorizerLib", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def make_data(task: str, data_dir: Path) -> None:
    for split, n, seed in (("train", TRAIN_CASES, TRAIN_SEED), ("test", TEST_CASES, TEST_SEED)):
        out = data_dir / f"{task}-{split}"
        if out.is_dir() and any(out.iterdir()):
            print(f"{task}: {out} already holds phantoms")
            continue
        cli("phantom", "--task", task, "--n", str(n), "--seed", str(seed), "--spacing", str(SPACING_MM[task]),
            "--out", str(out))


def run_dir(task: str, runs_dir: Path) -> Path:
    return runs_dir / f"demo-{task}" / "fold0"


def train(task: str, data_dir: Path, runs_dir: Path) -> None:
    if (run_dir(task, runs_dir) / "result.json").is_file():
        print(f"{task}: training already finished in {run_dir(task, runs_dir)}")
        return
    cli("train", str(ROOT / "training" / "configs" / f"demo-{task}.yaml"), "--fold", "0",
        "--data-root", str(data_dir / f"{task}-train"), "--output-dir", str(runs_dir), "--no-progress",
        threads=1)


def held_out_scores(task: str, model: Path, data_dir: Path, work: Path) -> dict:
    """Mean scores of ``model`` on the held-out phantoms, through ``segment_case`` like a user's run."""
    import SimpleITK as sitk
    import numpy as np

    from LesionFactorizerLib.evaluation.cohort import evaluate_arrays, read_label
    from LesionFactorizerLib.modelfile import load_model_file
    from LesionFactorizerLib.pipeline.segment import SegmentOptions, segment_case
    from LesionFactorizerLib.datasets import convert_labels, discover

    loaded = [load_model_file(model)]
    inputs = loaded[0].metadata["inputs"]
    rows, seconds = [], []
    for case in discover(LAYOUT[task], data_dir / f"{task}-test", task):
        t0 = time.perf_counter()
        out = segment_case(SegmentOptions(inputs={n: case.images[n].path for n in inputs},
                                          output=str(work / "held-out" / task / case.id), task=task,
                                          overwrite=True, overview=False), loaded=loaded)
        seconds.append(time.perf_counter() - t0)
        pred, _, _ = read_label(out["segmentation"])
        ref_img = sitk.ReadImage(case.label)
        ref = convert_labels(sitk.GetArrayFromImage(ref_img), case.label_map, case.label)
        row = evaluate_arrays(pred, ref, task, tuple(reversed(ref_img.GetSpacing())))
        rows.append({"case": case.id, **{k: v for k, v in row.items() if isinstance(v, (int, float))}})
    keys = [k for k in rows[0] if k.startswith(("dice_", "lesion_f1", "lesion_sensitivity", "lesion_ppv"))]
    mean = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r[k], float) and not math.isnan(r[k])]
        mean[k] = round(float(np.mean(vals)), 4) if vals else None
    return {"cases": len(rows), "seed": TEST_SEED, "spacing_mm": SPACING_MM[task], "mean": mean,
            "per_case": rows, "seconds_per_case": round(float(np.mean(seconds)), 2)}


def model_card(task: str, meta: dict, held: dict, result: dict) -> str:
    kw = meta["architecture"]["kwargs"]
    pre = meta["preprocessing"]
    mean = held["mean"]
    if task == "tumor":
        scores = ", ".join(f"{r} Dice {mean.get(f'dice_{r}', float('nan')):.3f}" for r in ("WT", "TC", "ET"))
    else:
        label = "infarct" if task == "stroke" else "new lesion"
        dice_key = next(k for k in mean if k.startswith("dice_"))
        scores = f"{label} Dice {mean[dice_key]:.3f}, lesion-wise F1 {mean['lesion_f1']:.3f}"
    preset, where, note = REAL_DATA[task]
    steps = result.get("steps")
    minutes = result.get("seconds", 0) / 60
    kept = meta["training"].get("steps")
    return (
        f"DEMONSTRATION MODEL - trained only on synthetic phantoms, not for clinical use. "
        f"Swin Factorizer at reduced width (widths {'-'.join(str(w) for w in kw['widths'])}, head dim "
        f"{kw['head_dim']}, window {kw['window']}, fp16 weights), inputs {', '.join(meta['inputs'])}, "
        f"{pre['spacing'][0]:g} mm spacing, {'x'.join(str(p) for p in pre['patch_size'])} patches. "
        f"Trained for {steps} steps ({minutes:.0f} min wall-clock on 2 shared CPU cores; these are the weights of "
        f"the best-validation checkpoint, step {kept}) on {TRAIN_CASES} phantoms made by "
        f"`lesion-factorizer phantom --task {task} --seed {TRAIN_SEED} --spacing {SPACING_MM[task]:g}` "
        f"(MNI152 anatomy with simulated lesions; never patient data). Held-out phantoms ({held['cases']} cases, "
        f"seed {held['seed']}): {scores}. It exists so that `lesion-factorizer demo`, the Slicer module and the "
        f"tests run offline; it is not validated on real scans and will miss or invent lesions there. To "
        f"train on real data: `lesion-factorizer train {preset} --data-root {where}`{note}, then "
        f"`lesion-factorizer export runs/{preset}/fold0 --output my-model.safetensors --half`. "
        f"Rebuild this file: `python training/demo_models.py --tasks {task}`."
    )


def card(task: str, data_dir: Path, runs_dir: Path, models_dir: Path, work: Path) -> Path:
    from LesionFactorizerLib.modelfile import read_metadata
    from LesionFactorizerLib.training.export import export_checkpoint

    rdir = run_dir(task, runs_dir)
    ckpt = rdir / "checkpoints" / "best.ckpt.safetensors"
    if not ckpt.is_file():
        ckpt = rdir / "checkpoints" / "last.ckpt.safetensors"
    draft = work / "models" / f"demo-{task}.safetensors"
    export_checkpoint(ckpt, draft, name=f"demo-{task}", half=True)
    held = held_out_scores(task, draft, data_dir, work)
    result = json.loads((rdir / "result.json").read_text())
    text = model_card(task, read_metadata(draft), held, result)
    final = models_dir / f"demo-{task}.safetensors"
    export_checkpoint(ckpt, final, name=f"demo-{task}", half=True, description=text, extra_training={
        "demo": True, "synthetic_data": True, "train_seconds": round(result["seconds"], 1),
        "held_out": {k: v for k, v in held.items() if k != "per_case"}})
    final.chmod(0o644)   # written through mkstemp (0600); a shipped file must be readable by all
    (work / f"held-out-{task}.json").write_text(json.dumps(held, indent=2))
    print(json.dumps({"task": task, "model": str(final), "bytes": final.stat().st_size,
                      "held_out": held["mean"]}))
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of tumor,stroke,ms-new")
    p.add_argument("--steps", default="data,train,card", help="comma-separated subset of data,train,card")
    p.add_argument("--work", default=str(ROOT / "out" / "demo-models"), help="phantoms, runs and drafts")
    p.add_argument("--data-dir", help="phantom folder (default WORK/data)")
    p.add_argument("--models-dir", default=str(ROOT / "Resources" / "Models"), help="where the model files go")
    a = p.parse_args(argv)
    work = Path(a.work).absolute()
    data_dir = Path(a.data_dir).absolute() if a.data_dir else work / "data"
    runs_dir = work / "runs"
    steps = set(a.steps.split(","))
    for task in [t for t in a.tasks.split(",") if t]:
        if task not in TASKS:
            p.error(f"unknown task {task!r}")
        t0 = time.perf_counter()
        if "data" in steps:
            make_data(task, data_dir)
        if "train" in steps:
            train(task, data_dir, runs_dir)
        if "card" in steps:
            card(task, data_dir, runs_dir, Path(a.models_dir), work)
        print(f"{task}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
