"""Do the top-ranked NMF components explain the lesion, and how long does "drop this component" take?

    .venv/bin/python benchmarks/bench_component_ranking.py                  # the three demo cases, CPU
    .venv/bin/python benchmarks/bench_component_ranking.py --tasks stroke --device cuda

For each bundled sample case (``Resources/SampleData``) with its bundled demo model:

1. ``segment --components`` (in process) — the ranking is written to components.json;
2. on the chosen layer (that of the best-scoring component), every component's overlap with the
   lesion, on the layer's own grid with lesion and brain as voxel fractions (``pipeline.ranking``):
   the ranking score (soft Dice with the predicted lesion), the Dice of the map thresholded at half
   its robust maximum, and the activation-mass fraction inside the lesion — each against the
   predicted lesion *and* against the sample's ground-truth label (which the ranking never saw).
   The top component is compared with the mean over all components of the layer, i.e. the
   expected value for a component drawn at random (the baseline measured in the same run);
3. the counterfactual for the top component: in process (stage timings from counterfactual.json)
   and as the Slicer worker runs it, ``python -m LesionFactorizerLib counterfactual`` in a fresh
   process (wall time including the interpreter, torch import and model load).

Prints one block per case and writes ``--out/bench-component-ranking.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from LesionFactorizerLib.core.reportspec import COUNTERFACTUAL_OUTPUTS, OUTPUTS

REPO = Path(__file__).resolve().parents[1]


def layer_overlaps(case_dir: Path, layer_entry: dict, label_path: str, report, input_paths: list[str]) -> dict:
    """Per component of one layer: score / thresholded Dice / mass fraction vs predicted and true lesion."""
    import SimpleITK as sitk

    from LesionFactorizerLib.pipeline.geometry import Geometry
    from LesionFactorizerLib.pipeline.ranking import model_grid_masks, score_components

    g = report.preprocessing["model_grid"]
    model_grid = Geometry(tuple(g["size"]), tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))
    image = sitk.ReadImage(str(case_dir / OUTPUTS.components.name / layer_entry["file"]))
    maps = np.moveaxis(sitk.GetArrayFromImage(image), -1, 0).astype(np.float32)
    stride = int(layer_entry["stride"])
    inputs = [sitk.ReadImage(p) for p in input_paths]
    predicted = sitk.ReadImage(str(case_dir / report.outputs[OUTPUTS.segmentation.key]))
    truth = sitk.Resample(sitk.ReadImage(label_path), predicted, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    out = {}
    for name, labels in (("predicted", predicted), ("truth", truth)):
        masks = model_grid_masks(labels, [sitk.Resample(i, predicted) for i in inputs], model_grid)
        lesion, brain = masks.at_stride(stride, maps.shape[1:])
        scores = score_components(maps, lesion, brain)
        rows = []
        for a, s in zip(maps, scores):
            top = np.percentile(a[brain > 0], 99) if (brain > 0).any() else a.max()
            on = (a >= 0.5 * top).astype(np.float32) if top > 0 else np.zeros_like(a)
            dice = 2 * float((on * lesion).sum()) / max(float((on * brain).sum() + lesion.sum()), 1e-9)
            mass = float((a * lesion).sum()) / max(float((a * brain).sum()), 1e-9)
            rows.append({"score": s["score"], "dice_half": dice, "mass_in_lesion": mass})
        out[name] = rows
    return out


def summarise(rows: list[dict], top: int) -> dict:
    keys = rows[0].keys()
    return {k: {"top": round(rows[top][k], 4), "random_mean": round(float(np.mean([r[k] for r in rows])), 4),
                "random_median": round(float(np.median([r[k] for r in rows])), 4)} for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="tumor,stroke,ms-new")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(REPO / "build" / "bench-component-ranking"))
    parser.add_argument("--no-subprocess", action="store_true", help="skip the CLI (worker) timing")
    args = parser.parse_args()

    from LesionFactorizerLib.demo import bundled_demo_model
    from LesionFactorizerLib.modelfile import read_spec
    from LesionFactorizerLib.phantoms.samples import sample_case
    from LesionFactorizerLib.pipeline.segment import run_counterfactual
    from LesionFactorizerLib.pipeline.segment import SegmentSettings, segment_case

    out = Path(args.out)
    results = {"device": args.device, "load_average": os.getloadavg(), "cases": {}}
    for task in args.tasks.split(","):
        sample = sample_case(task)
        model = bundled_demo_model(task)
        inputs = {n: sample["inputs"][n] for n in read_spec(model).inputs}
        case_dir = out / task
        t = time.monotonic()
        report = segment_case(inputs, str(case_dir), SegmentSettings(models=[str(model)], device=args.device,
                                                                     components=True, overwrite=True)).report
        seg_s = time.monotonic() - t
        best = report.components_best
        entry = report.component_entry(best["layer"])
        overlaps = layer_overlaps(case_dir, entry, sample["label"], report, list(inputs.values()))
        top = best["component"]
        cf = run_counterfactual(case_dir, best["layer"], top, device=args.device, overwrite=True)
        summary = json.loads(Path(cf[COUNTERFACTUAL_OUTPUTS.summary.key]).read_text(encoding="utf-8"))
        row = {"layer": best["layer"], "components": entry["components"], "top_component": top,
               "segment_s": round(seg_s, 2), "segment_timings_s": report.timings_s,
               "vs_predicted": summarise(overlaps["predicted"], top), "vs_truth": summarise(overlaps["truth"], top),
               "counterfactual": {"timings_s": summary["timings_s"], "lesion": summary["lesion"],
                                  "difference_voxels": summary["difference_voxels"]}}
        if not args.no_subprocess:
            t, children = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "counterfactual", str(case_dir),
                                   "--layer", best["layer"], "--component", str(top), "--device", args.device,
                                   "--output", str(out / f"{task}-cli-counterfactual"), "--overwrite",
                                   "--progress", "none"], capture_output=True, text=True, cwd=REPO)
            row["counterfactual"]["cli_wall_s"] = round(time.monotonic() - t, 2)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            row["counterfactual"]["cli_cpu_s"] = round(after.ru_utime + after.ru_stime
                                                       - children.ru_utime - children.ru_stime, 2)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
        results["cases"][task] = row
        p, g = row["vs_predicted"], row["vs_truth"]
        print(f"[{task}] layer {row['layer']} ({row['components']} components), top #{top}")
        for label, d in (("predicted lesion", p), ("true lesion", g)):
            print(f"  vs {label:16s}: score {d['score']['top']:.3f} vs random {d['score']['random_mean']:.3f} | "
                  f"Dice@half {d['dice_half']['top']:.3f} vs {d['dice_half']['random_mean']:.3f} | "
                  f"mass in lesion {d['mass_in_lesion']['top']:.3f} vs {d['mass_in_lesion']['random_mean']:.3f}")
        c = row["counterfactual"]
        print(f"  counterfactual: total {c['timings_s']['total']:.1f} s (inference {c['timings_s']['inference']:.1f} s,"
              f" model {c['timings_s']['model']:.1f} s; CPU {c['timings_s']['cpu_total']:.1f} s) in process; "
              f"CLI {c.get('cli_wall_s', float('nan')):.1f} s (CPU {c.get('cli_cpu_s', float('nan')):.1f} s); "
              f"lesion {c['lesion']['before_ml']:.2f} -> {c['lesion']['after_ml']:.2f} mL, "
              f"voxels {c['difference_voxels']}")
    results["load_average_after"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-component-ranking.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"written {out / 'bench-component-ranking.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
