"""Build the bundled demo models (Resources/Models/demo-<task>.safetensors) from scratch.

    python training/demo_models.py                      # all three tasks, each by its shipped recipe
    python training/demo_models.py --tasks stroke       # one task
    python training/demo_models.py --recipe cpu         # everything on the CPU (far slower than on a GPU)
    python training/demo_models.py --steps data,pack    # only some steps

Two recipes, one network (a reduced-width Swin Factorizer):

* ``cpu`` — ``lesion-factorizer train training/configs/demo-<task>.yaml`` on 32 phantoms, widths
  8-128, single-threaded (on a small shared machine two threads fighting other processes made steps
  much slower than one). The shipped stroke model.
* ``gpu`` — ``lesion-factorizer train demo-<task>-gpu --pack …`` on 64 phantoms (the first 32 are
  the CPU recipe's), widths 16-256, 32-patch batches, minutes on one GPU. The shipped tumor and
  ms-new models (trained by the earlier GPU-only loop of ``packed.py``; their cards say how). The
  GPU host needs torch, Lightning and MONAI, not SimpleITK: ``pack`` runs here, then copy the pack
  and the checkout there, run the ``train`` step (or the command it prints) and copy
  ``WORK/runs/demo-<task>-gpu`` back before ``card``.

The gpu recipe of ms-new adds a last stage on this machine's CPU (``REFINE``): from the recipe's
best checkpoint, ``demo-ms-new-1mm`` trains on 48 phantoms made at 1 mm, where the smallest new
lesions are several voxels across; the model file (and its held-out phantoms) are at 1 mm.

Steps, per task (each skips what its output already holds, so an interrupted build resumes):

1. ``data``  — training phantoms (seed 100) and held-out phantoms (10 cases, seed 9000: no case in
   common with training, nor with the bundled sample cases) with ``lesion-factorizer phantom`` at
   the demo model's spacing.
2. ``pack``  — gpu recipe only: the training arrays in one file (``training/packed.py``).
3. ``train`` — as above; fold 0 keeps validation Dice for picking the checkpoint.
4. ``card``  — export the best checkpoint with fp16 weights, score it on the held-out phantoms
   through the real inference pipeline, and write the final model file whose description is the
   model card (synthetic training data, demonstration only, how it was trained, held-out scores,
   how to train on real data); the scores are also stored under ``training.held_out``.
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
TRAIN_SEED, TEST_CASES, TEST_SEED = 100, 10, 9000
SHIPPED_RECIPE = {"tumor": "gpu", "stroke": "cpu", "ms-new": "gpu"}
# A last CPU stage on a finer grid, from the recipe's best checkpoint: task → (config, spacing, phantoms).
REFINE = {"ms-new": ("demo-ms-new-1mm", 1.0, 48)}
REAL_DATA = {   # (bundled config, data folder, note)
    "tumor": ("swin-factorizer-brats", "/path/to/BraTS2021_TrainingData",
              " (an MSD Task01 folder needs --set data.format=msd-task01)"),
    "stroke": ("swin-factorizer-isles", "/path/to/ISLES-2022", ""),
    "ms-new": ("resunet-msseg2", "/path/to/MSSEG-2/training",
               " (for a Factorizer add --set model.preset=swin-factorizer-isles)"),
}
LAYOUT = {"tumor": "brats", "stroke": "isles22", "ms-new": "msseg2"}


def run(cmd: list[str], threads: int | None = None) -> None:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def cli(*args: str, threads: int | None = None) -> None:
    run([sys.executable, "-m", "LesionFactorizerLib", *args], threads)


class Recipe:
    """Where a recipe's config, phantoms and run live."""

    def __init__(self, kind: str, task: str, work: Path):
        self.kind, self.task, self.work = kind, task, work
        self.config = f"demo-{task}" + ("-gpu" if kind == "gpu" else "")
        self.train_cases = 64 if kind == "gpu" else 32
        self.train_dir = work / ("data-gpu" if kind == "gpu" else "data") / f"{task}-train"
        self.run_dir = work / "runs" / self.config / "fold0"
        self.pack = work / "pack" / f"{task}.npz"
        self.refine = REFINE.get(task) if kind == "gpu" else None   # its config continues the gpu network
        self.spacing = self.refine[1] if self.refine else SPACING_MM[task]   # the model file's grid
        data = work / (f"data-{self.spacing:g}mm" if self.refine else "data")
        self.test_dir = data / f"{task}-test"
        self.refine_dir = data / f"{task}-train"
        self.final_run = work / "runs" / self.refine[0] / "fold0" if self.refine else self.run_dir


def make_data(r: Recipe) -> None:
    sets = [(r.train_dir, r.train_cases, TRAIN_SEED, SPACING_MM[r.task]), (r.test_dir, TEST_CASES, TEST_SEED, r.spacing)]
    if r.refine:
        sets.append((r.refine_dir, r.refine[2], TRAIN_SEED, r.spacing))
    for out, n, seed, spacing in sets:
        if out.is_dir() and any(out.iterdir()):
            print(f"{r.task}: {out} already holds phantoms")
            continue
        cli("phantom", "--task", r.task, "--n", str(n), "--seed", str(seed), "--spacing", f"{spacing:g}",
            "--out", str(out))


def make_pack(r: Recipe) -> None:
    if r.kind != "gpu" or r.pack.is_file():
        return
    run([sys.executable, "-m", "LesionFactorizerLib.training.packed", r.config, "--data-root", str(r.train_dir),
         "--out", str(r.pack)])


def train(r: Recipe, max_steps: int | None) -> None:
    if not (r.run_dir / "result.json").is_file():
        train_recipe(r, max_steps)
    else:
        print(f"{r.task}: training already finished in {r.run_dir}")
    if r.refine and not (r.final_run / "result.json").is_file():
        cli("train", str(ROOT / "training" / "configs" / f"{r.refine[0]}.yaml"), "--fold", "0",
            "--data-root", str(r.refine_dir), "--output-dir", str(r.work / "runs"), "--no-progress",
            "--init", str(r.run_dir / "checkpoints" / "best.ckpt.safetensors"), threads=2)


def train_recipe(r: Recipe, max_steps: int | None) -> None:
    runs = str(r.work / "runs")
    if r.kind == "cpu":
        cli("train", str(ROOT / "training" / "configs" / f"{r.config}.yaml"), "--fold", "0",
            "--data-root", str(r.train_dir), "--output-dir", runs, "--no-progress", threads=1)
        return
    cmd = [sys.executable, "-m", "LesionFactorizerLib", "train", r.config, "--fold", "0", "--pack", str(r.pack),
           "--output-dir", runs, "--no-progress", *(["--max-steps", str(max_steps)] if max_steps else [])]
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"{r.task}: the gpu recipe trains on a CUDA GPU and none is here. On a GPU host, from a "
                         f"checkout with {r.pack} copied in, run\n  {' '.join(cmd[1:])}\nthen copy "
                         f"{r.run_dir.parent} back here and run the card step (or use --recipe cpu).")
    run(cmd)


def held_out_scores(task: str, model: Path, test_dir: Path, work: Path, spacing: float) -> dict:
    """Mean scores of ``model`` on the held-out phantoms, through ``segment_case`` like a user's run."""
    import SimpleITK as sitk
    import numpy as np

    from LesionFactorizerLib.evaluation.cohort import evaluate_arrays, read_label
    from LesionFactorizerLib.modelfile import load_model_file
    from LesionFactorizerLib.pipeline.segment import segment_case
    from LesionFactorizerLib.core.settings import SegmentSettings
    from LesionFactorizerLib.datasets import convert_labels, discover

    loaded = [load_model_file(model)]
    inputs = loaded[0].metadata["inputs"]
    rows, seconds = [], []
    for case in discover(LAYOUT[task], test_dir, task):
        t0 = time.perf_counter()
        out = segment_case({n: case.images[n].path for n in inputs}, str(work / "held-out" / task / case.id),
                           SegmentSettings(task=task, overwrite=True, overview=False), loaded=loaded)
        seconds.append(time.perf_counter() - t0)
        pred, _, _ = read_label(out.outputs["segmentation"])
        ref_img = sitk.ReadImage(case.label)
        ref = convert_labels(sitk.GetArrayFromImage(ref_img), case.label_map, case.label)
        row = evaluate_arrays(pred, ref, task, tuple(reversed(ref_img.GetSpacing())))
        rows.append({"case": case.id, **{k: v for k, v in row.items() if isinstance(v, (int, float))}})
    keys = [k for k in rows[0] if k.startswith(("dice_", "lesion_f1", "lesion_sensitivity", "lesion_ppv"))]
    mean = {}
    for k in keys:
        vals = [r[k] for r in rows if isinstance(r[k], float) and not math.isnan(r[k])]
        mean[k] = round(float(np.mean(vals)), 4) if vals else None
    return {"cases": len(rows), "seed": TEST_SEED, "spacing_mm": spacing, "mean": mean,
            "per_case": rows, "seconds_per_case": round(float(np.mean(seconds)), 2)}


def how_trained(r: Recipe, result: dict, kept: int) -> str:
    """One sentence on the run behind the weights, from its result.json (``history``, free text,
    describes the stages before a run that started from another run's checkpoint)."""
    minutes = result.get("seconds", 0) / 60
    where = result.get("device") or "2 shared CPU cores"
    steps, start = result.get("steps"), result.get("init_step")
    if start:
        text = (f"Trained for {steps} steps in stages ({result.get('history', 'an earlier run')}; the last, "
                f"{steps - start} steps in {minutes:.0f} min on {where}, started from the best checkpoint of the "
                f"stage before, step {start}, with a new warm-up")
    else:
        text = f"Trained for {steps} steps ({minutes:.0f} min wall-clock on {where}"
    data = (f"{r.train_cases} phantoms made by `lesion-factorizer phantom --task {r.task} --n {r.train_cases} "
            f"--seed {TRAIN_SEED} --spacing {SPACING_MM[r.task]:g}`")
    configs = f"config `training/configs/{r.config}.yaml`"
    if r.refine:
        name, spacing, n = r.refine
        data += f", the last stage on {n} made alike at {spacing:g} mm (`--n {n} --spacing {spacing:g}`)"
        configs = f"configs `training/configs/{r.config}.yaml`, then `training/configs/{name}.yaml`"
    # a stage started with --init counts its steps from 0; the sentence counts over all stages
    return (text + f"; these are the weights of the best-validation checkpoint, step {kept + (start or 0)}) on {data} "
            f"(MNI152 anatomy with simulated lesions; never patient data), {configs}.")


def held_note(held: dict) -> str:
    """Lesion F1 is undefined for a case without lesions: say over how many cases it is averaged."""
    scored = [c for c in held["per_case"] if isinstance(c.get("lesion_f1"), float) and c["lesion_f1"] == c["lesion_f1"]]
    if not scored or len(scored) == held["cases"]:
        return ""
    return f", lesion F1 over the {len(scored)} with a lesion"


def model_card(r: Recipe, meta: dict, held: dict, result: dict) -> str:
    kw = meta["architecture"]["kwargs"]
    pre = meta["preprocessing"]
    mean = held["mean"]
    if r.task == "tumor":
        scores = ", ".join(f"{n} Dice {mean.get(f'dice_{n}', float('nan')):.3f}" for n in ("WT", "TC", "ET"))
    else:
        label = "infarct" if r.task == "stroke" else "new lesion"
        dice_key = next(k for k in mean if k.startswith("dice_"))
        scores = f"{label} Dice {mean[dice_key]:.3f}, lesion-wise F1 {mean['lesion_f1']:.3f}"
    preset, where, note = REAL_DATA[r.task]
    return (
        f"DEMONSTRATION MODEL - trained only on synthetic phantoms, not for clinical use. "
        f"Swin Factorizer at reduced width (widths {'-'.join(str(w) for w in kw['widths'])}, head dim "
        f"{kw['head_dim']}, window {kw['window']}, fp16 weights), inputs {', '.join(meta['inputs'])}, "
        f"{pre['spacing'][0]:g} mm spacing, {'x'.join(str(p) for p in pre['patch_size'])} patches. "
        f"{how_trained(r, result, meta['training'].get('steps'))} Held-out phantoms ({held['cases']} cases, "
        f"seed {held['seed']}; means over cases{held_note(held)}): {scores}. "
        f"It exists so that `lesion-factorizer demo`, the Slicer module and the "
        f"tests run offline; it is not validated on real scans and will miss or invent lesions there. To "
        f"train on real data: `lesion-factorizer train {preset} --data-root {where}`{note}, then "
        f"`lesion-factorizer export runs/{preset}/fold0 --output my-model.safetensors --half`. "
        f"Rebuild this file: `python training/demo_models.py --tasks {r.task}`."
    )


def card(r: Recipe, models_dir: Path) -> Path:
    from LesionFactorizerLib.catalog import write_bundled_catalog
    from LesionFactorizerLib.modelfile import read_metadata
    from LesionFactorizerLib.training.export import export_checkpoint

    ckpt = r.final_run / "checkpoints" / "best.ckpt.safetensors"
    if not ckpt.is_file():
        ckpt = r.final_run / "checkpoints" / "last.ckpt.safetensors"
    name = f"demo-{r.task}"
    draft = r.work / "models" / f"{name}.safetensors"
    export_checkpoint(ckpt, draft, name=name, half=True)
    held = held_out_scores(r.task, draft, r.test_dir, r.work, r.spacing)
    result = json.loads((r.final_run / "result.json").read_text(encoding="utf-8"))
    text = model_card(r, read_metadata(draft), held, result)
    final = models_dir / f"{name}.safetensors"
    export_checkpoint(ckpt, final, name=name, half=True, description=text, extra_training={
        "demo": True, "synthetic_data": True, "recipe": r.kind, "train_seconds": round(result["seconds"], 1),
        "train_device": result.get("device", "CPU"),
        "held_out": {k: v for k, v in held.items() if k != "per_case"}})
    (r.work / f"held-out-{r.task}.json").write_text(json.dumps(held, indent=2), encoding="utf-8")
    write_bundled_catalog(models_dir)   # the catalogue's checksum and size of the demos come from the files
    print(json.dumps({"task": r.task, "model": str(final), "bytes": final.stat().st_size,
                      "held_out": held["mean"]}))
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of tumor,stroke,ms-new")
    p.add_argument("--steps", default="data,pack,train,card", help="comma-separated subset of data,pack,train,card")
    p.add_argument("--recipe", choices=("cpu", "gpu"), help="for every task (default: each task's shipped recipe, "
                   + ", ".join(f"{t} {k}" for t, k in SHIPPED_RECIPE.items()) + ")")
    p.add_argument("--max-steps", type=int, help="gpu recipe: optimiser steps per task (default: the config's)")
    p.add_argument("--work", default=str(ROOT / "out" / "demo-models"), help="phantoms, packs, runs and drafts")
    p.add_argument("--models-dir", default=str(ROOT / "Resources" / "Models"), help="where the model files go")
    a = p.parse_args(argv)
    work = Path(a.work).absolute()
    steps = set(a.steps.split(","))
    for task in [t for t in a.tasks.split(",") if t]:
        if task not in TASKS:
            p.error(f"unknown task {task!r}")
        r = Recipe(a.recipe or SHIPPED_RECIPE[task], task, work)
        t0 = time.perf_counter()
        if "data" in steps:
            make_data(r)
        if "pack" in steps:
            make_pack(r)
        if "train" in steps:
            train(r, a.max_steps)
        if "card" in steps:
            card(r, Path(a.models_dir))
        print(f"{task}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
