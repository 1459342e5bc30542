"""Agreement of the two window plans (``--windows sliding`` vs ``whole``) on real demo models.

    .venv/bin/python benchmarks/bench_window_plan.py                      # 3 tasks × (sample + 6 held-out)
    .venv/bin/python benchmarks/bench_window_plan.py --tasks stroke --cases sample,0

For each task's bundled demo model, on its bundled sample and on held-out phantoms (generator
seed 9000, never trained on), ``segment`` runs twice with components — once per plan — and this
prints per case: the windows each plan ran, label Dice between the two plans (all lesion labels
together, and the mean over the task's labels), Dice of each plan against the truth, and a seam
score of the finest NMF layer's component maps (per axis, the largest jump between neighbouring
slices over their median jump, averaged over components: stitching seams show up as spikes).
The summary line per task is what README "Window plans" quotes and what the presets follow.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from LesionFactorizerLib.core.reportspec import OUTPUTS

HELD_OUT_SEED = 9000


def write_phantom(task: str, index: int, folder: Path) -> dict:
    """Held-out phantom ``index`` at the bundled demo model's spacing (the grid it trained on)."""
    from LesionFactorizerLib.demo import bundled_demo_model
    from LesionFactorizerLib.modelfile import read_spec
    from LesionFactorizerLib.phantoms.generate import generate_case
    from LesionFactorizerLib.phantoms.layouts import write_nifti

    spacing = float(read_spec(bundled_demo_model(task)).preprocessing.spacing[0])
    case = generate_case(task, HELD_OUT_SEED, index, spacing=spacing)
    g = case.geometry
    files: dict = {"inputs": {}}
    for key, array in list(case.images.items()) + [("label", case.label)]:
        path = folder / f"{task}_{index}_{key}.nii.gz"
        write_nifti(array, g, str(path))
        if key == "label":
            files["label"] = str(path)
        else:
            files["inputs"][key] = str(path)
    return files


def dice(a, b) -> float:
    import numpy as np

    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def seam_score(folder: Path) -> float | None:
    """Mean over components and axes of max/median jump between neighbouring slices (finest layer)."""
    import numpy as np
    import SimpleITK as sitk

    files = sorted((folder / "components").glob("*encoder1*"))
    scores = []
    for path in files:
        maps = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)
        maps = maps[None] if maps.ndim == 3 else np.moveaxis(maps, -1, 0) if maps.ndim == 4 else maps
        for m in maps:
            for axis in range(3):
                jumps = np.abs(np.diff(m, axis=axis)).mean(axis=tuple(a for a in range(3) if a != axis))
                jumps = jumps[jumps > 0]
                if jumps.size > 2:
                    scores.append(float(jumps.max() / np.median(jumps)))
    return float(np.mean(scores)) if scores else None


def run_case(task: str, files: dict, out: Path) -> dict:
    import numpy as np
    import SimpleITK as sitk

    from LesionFactorizerLib.pipeline.segment import Segmenter
    from LesionFactorizerLib.core.settings import SegmentSettings
    from LesionFactorizerLib.core.tasks import get_task

    truth = sitk.GetArrayFromImage(sitk.ReadImage(files["label"]))
    values = [int(label.value) for label in get_task(task).labels]
    labels, row = {}, {}
    for plan in ("sliding", "whole"):
        folder = out / plan
        inputs = {k: v for k, v in files["inputs"].items() if k in get_task(task).input_names}
        settings = SegmentSettings(task=task, device="cpu", windows=plan, components=True, overview=False,
                                   overwrite=True)
        t = time.perf_counter()
        result = Segmenter(settings).segment(inputs, folder)
        row[f"{plan}_s"] = round(time.perf_counter() - t, 2)
        row[f"{plan}_windows"] = result.report.settings["window_plan"]["windows"]
        labels[plan] = sitk.GetArrayFromImage(sitk.ReadImage(result.outputs[OUTPUTS.segmentation.key]))
        row[f"{plan}_truth_dice"] = round(dice(labels[plan] > 0, truth > 0), 4)
        row[f"{plan}_seam"] = seam_score(folder)
    row["plans_dice"] = round(dice(labels["sliding"] > 0, labels["whole"] > 0), 4)
    present = sorted(set(np.unique(labels["sliding"])) | set(np.unique(labels["whole"])) - {0}) or values
    row["plans_label_dice"] = round(float(np.mean([dice(labels["sliding"] == v, labels["whole"] == v)
                                                   for v in present])) if present else 1.0, 4)
    return row


def summarize(rows: list[dict]) -> dict:
    import numpy as np

    summary = {"cases": len(rows)}
    summary.update({k: round(float(np.mean([r[k] for r in rows])), 4)
                    for k in ("plans_dice", "plans_label_dice", "sliding_truth_dice", "whole_truth_dice",
                              "sliding_windows", "whole_windows")})
    summary["plans_dice_min"] = min(r["plans_dice"] for r in rows)
    summary["truth_dice_change_min"] = round(min(r["whole_truth_dice"] - r["sliding_truth_dice"] for r in rows), 4)
    seams = [(r["sliding_seam"], r["whole_seam"]) for r in rows if r["sliding_seam"] and r["whole_seam"]]
    if seams:
        summary["seam_sliding"], summary["seam_whole"] = (round(float(np.mean(s)), 3) for s in zip(*seams))
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="tumor,stroke,ms-new")
    p.add_argument("--cases", default="sample,0,1,2,3,4,5",
                   help="sample (the bundled case) and/or held-out phantom indices (seed 9000), comma-separated")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    from LesionFactorizerLib.phantoms.samples import sample_case

    torch.set_num_threads(args.threads)
    tasks = args.tasks.split(",")
    names = args.cases.split(",")
    rows: dict[str, list] = {task: [] for task in tasks}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in names:   # case by case across tasks: a run cut short still covers every task
            for task in tasks:
                files = sample_case(task) if name == "sample" else write_phantom(task, int(name), tmp)
                label = name if name == "sample" else f"{HELD_OUT_SEED}:{name}"
                row = {"task": task, "case": label, **run_case(task, files, tmp / task / name)}
                rows[task].append(row)
                print(json.dumps(row), flush=True)
    for task in tasks:
        print("SUMMARY", task, json.dumps(summarize(rows[task])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
