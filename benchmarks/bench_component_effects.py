"""Do the components the overlap ranking puts first also change the lesion? Effect ranking, measured.

    .venv/bin/python benchmarks/bench_component_effects.py --samples             # the three bundled samples
    .venv/bin/python benchmarks/bench_component_effects.py --phantoms 2          # 2 held-out phantoms per task
    .venv/bin/python benchmarks/bench_component_effects.py --phantoms 6 --crop-mm 30 --layers encoder1,decoder3,decoder2
    .venv/bin/python benchmarks/bench_component_effects.py --brats-size          # cost on one BraTS-size case

Every case runs ``segment --effects`` (in process, CPU unless ``--device``) with its task's bundled
demo model, which writes both rankings of every NMF layer. Per case it prints:

- the effect-ranked top component over all layers (``best_effect``) with its effect in voxels and mL
  and, as a check, the ``counterfactual`` of that component run the ordinary way (``--check``);
- the Spearman rank correlation between the overlap score and the effect (changed voxels) over the
  components of each layer, and pooled over every layer's components (ties: average ranks; a layer
  where every component has the same effect has no correlation and is left out);
- the largest single-component effect as a share of the lesion volume;
- the cost: the effect ranking's wall time, per layer and in all, against the rest of the run
  (``segment`` without the effects), as a ratio, beside the ratio the progress bar assumes
  (``effects.stage_weight`` of the ranked layers over the other stages' weights, which sum to 1).

Per task the phantoms are summed up (``summarise``): each layer's Spearman (median and range over
the cases), the largest single-component effect per case (median and max), the cost ratio;
``--summary FILE …`` prints that again from written result files (``--first-phantom`` splits a
task's phantoms over several runs).

``--crop-mm M`` crops each phantom to ±M mm around its lesion's centre first (as the tests'
cropped stroke sample), so that many phantoms fit a small machine: effects then are measured on
a smaller field of view than a whole head.

Held-out phantoms: seed 9000 (the demo models' held-out seed; they were trained on seed 100), at
each model's spacing. ``--brats-size`` makes one tumour phantom on the 1 mm BraTS grid
(240×240×155), segmented at the demo model's 3 mm: the case size a user gives, not the network's.
Writes ``--out/bench-component-effects.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from LesionFactorizerLib.core.reportspec import COUNTERFACTUAL_OUTPUTS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
HELD_OUT_SEED = 9000


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho with average ranks; None when either side is constant."""
    from scipy.stats import rankdata

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def analyse(report) -> dict:
    """Both rankings of every layer of one run: correlations, largest effect, costs."""
    lesion_ml = sum(report.volumes_ml.values())
    per_layer, pooled_score, pooled_effect = {}, [], []
    for entry in report.components:
        scores = {r["component"]: r["score"] for r in entry.get("ranking") or []}
        effects = {r["component"]: r["changed_voxels"] for r in entry.get("effect_ranking") or []}
        if not scores or not effects:
            continue
        keys = sorted(effects)
        s, e = [scores[k] for k in keys], [effects[k] for k in keys]
        pooled_score += s
        pooled_effect += e
        top = entry["effect_ranking"][0]
        per_layer[entry["layer"]] = {"components": entry["components"], "spearman": spearman(s, e),
                                     "top_effect": top["component"], "top_effect_voxels": top["changed_voxels"],
                                     "top_overlap": entry["ranking"][0]["component"],
                                     "top_overlap_effect_voxels": effects[entry["ranking"][0]["component"]],
                                     "effects_s": entry["effects_s"]}
    best = report.components_best_effect
    timings = report.timings_s
    rest = timings["total"] - timings["effects"]
    return {"lesion_ml": round(lesion_ml, 3), "best_effect": best, "best_overlap": report.components_best,
            "largest_effect_share": (round(best["changed_ml"] / lesion_ml, 4) if best and lesion_ml > 0 else None),
            "spearman_pooled": spearman(pooled_score, pooled_effect),
            "spearman_median_layer": (float(np.median(v)) if (v := [L["spearman"] for L in per_layer.values()
                                                                     if L["spearman"] is not None]) else None),
            "effects_s": timings["effects"], "segment_s": round(rest, 3),
            "ratio": round(timings["effects"] / rest, 1) if rest > 0 else None, "layers": per_layer}


def assumed_ratio(model: Path, layers: list[str]) -> float:
    """The effects stage's progress weight over the other stages' (they sum to 1)."""
    from LesionFactorizerLib.modelfile import load_model_file
    from LesionFactorizerLib.pipeline.effects import component_costs, stage_weight

    network = load_model_file(model).model
    return round(stage_weight(component_costs(network, layers)), 1)


def crop_around_lesion(inputs: dict[str, str], label: Path, half_mm: float) -> dict[str, str]:
    """Each input cropped (in place) to ±``half_mm`` around the centre of the lesion label (of the
    image when the phantom has no lesion, as some ms-new follow-ups have none)."""
    import SimpleITK as sitk

    truth = sitk.ReadImage(str(label))
    found = np.argwhere(sitk.GetArrayViewFromImage(truth) > 0)
    if not len(found):
        found = np.array([truth.GetSize()[::-1]]) / 2
    centre = np.round(found.mean(axis=0)).astype(int)[::-1]   # i, j, k
    half = np.ceil(half_mm / np.array(truth.GetSpacing())).astype(int)
    lo = np.maximum(centre - half, 0)
    size = np.minimum(centre + half, np.array(truth.GetSize())) - lo
    for path in inputs.values():
        sitk.WriteImage(sitk.RegionOfInterest(sitk.ReadImage(path), [int(v) for v in size], [int(v) for v in lo]), path)
    return inputs


def run_case(name: str, inputs: dict, model: Path, out: Path, device: str, check: bool,
             layers: list[str] | None = None) -> dict:
    from LesionFactorizerLib.pipeline.segment import run_counterfactual
    from LesionFactorizerLib.pipeline.segment import segment_case
    from LesionFactorizerLib.core.settings import SegmentSettings

    report = segment_case(inputs, str(out), SegmentSettings(models=[str(model)], device=device, components=True,
                                                            effects=True, component_layers=layers,
                                                            overwrite=True)).report
    row = analyse(report)
    row["assumed_ratio"] = assumed_ratio(model, [e["layer"] for e in report.components if "effect_ranking" in e])
    best = row["best_effect"]
    if check and best:
        summary = json.loads(Path(run_counterfactual(out, best["layer"], best["component"], device=device,
                                                     overwrite=True, picture=False)[COUNTERFACTUAL_OUTPUTS.summary.key]).read_text())
        row["counterfactual_check"] = {"difference_voxels": summary["difference_voxels"],
                                       "delta_ml": summary["lesion"]["delta_ml"],
                                       "inference_s": summary["timings_s"]["inference"]}
    show(name, row)
    return row


def show(name: str, row: dict) -> None:
    best, ob = row["best_effect"], row["best_overlap"]
    rho, median = (("n/a" if v is None else f"{v:+.2f}") for v in (row["spearman_pooled"], row["spearman_median_layer"]))
    top = (f"top effect {best['layer']} #{best['component']}: {best['changed_voxels']} voxels, "
           f"{best['changed_ml']:.2f} mL changed ({best['delta_ml']:+.2f} mL)" if best else "no component changes a voxel")
    over = ""
    if ob:
        layer = row["layers"].get(ob["layer"], {})
        over = f"; overlap top {ob['layer']} #{ob['component']} changes {layer.get('top_overlap_effect_voxels')} voxels"
    print(f"[{name}] lesion {row['lesion_ml']:.2f} mL; {top}{over}; Spearman(score, effect) pooled {rho}, "
          f"median per layer {median}; effects {row['effects_s']:.1f} s vs segment {row['segment_s']:.1f} s "
          f"(x{row['ratio']}; progress bar assumes x{row['assumed_ratio']})", flush=True)
    if "counterfactual_check" in row:
        print(f"    counterfactual of the top component: {row['counterfactual_check']}", flush=True)
    print("    per layer: " + ", ".join(f"{n} K={v['components']} {v['effects_s']:.1f}s" for n, v in row["layers"].items()),
          flush=True)


def summarise(task: str, rows: list[dict]) -> dict:
    """Over one task's phantoms: each layer's Spearman (median, range) and the largest
    single-component effect per case (median and max; voxels, mL, share of the lesion)."""
    layers: dict[str, list[float]] = {}
    for row in rows:
        for name, layer in row["layers"].items():
            if layer["spearman"] is not None:
                layers.setdefault(name, []).append(layer["spearman"])
    best = [row["best_effect"] or {"changed_voxels": 0, "changed_ml": 0.0} for row in rows]
    shares = [row["largest_effect_share"] for row in rows if row["largest_effect_share"] is not None]
    pooled = [r["spearman_pooled"] for r in rows if r["spearman_pooled"] is not None]

    def spread(values):
        return {"median": round(float(np.median(values)), 3), "max": round(float(max(values)), 3)}

    out = {"cases": len(rows),
           "spearman": {n: {"median": round(float(np.median(v)), 2), "min": round(min(v), 2),
                            "max": round(max(v), 2), "cases": len(v)} for n, v in layers.items()},
           "pooled_spearman_median": round(float(np.median(pooled)), 2) if pooled else None,
           "largest_voxels": spread([b["changed_voxels"] for b in best]),
           "largest_ml": spread([b["changed_ml"] for b in best]),
           "largest_share": spread(shares) if shares else None,
           "ratio": {"median": float(np.median([r["ratio"] for r in rows])), "assumed": rows[0].get("assumed_ratio")}}
    print(f"[{task}, {len(rows)} phantoms] " + json.dumps(out), flush=True)
    return out


def brats_size_case(folder: Path) -> dict[str, str]:
    """A held-out tumour phantom on the BraTS grid: 240×240×155 voxels of 1 mm, four inputs."""
    from LesionFactorizerLib.phantoms.generate import generate_case
    from LesionFactorizerLib.phantoms.layouts import write_nifti

    case = generate_case("tumor", HELD_OUT_SEED, 0, spacing=1.0, size=(240, 240, 155))
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for name, array in case.images.items():
        inputs[name] = str(folder / f"{name}.nii.gz")
        write_nifti(array, case.geometry, inputs[name])
    return inputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", action="store_true", help="the bundled sample of each task")
    parser.add_argument("--phantoms", type=int, default=0, metavar="N", help="N held-out phantoms per task")
    parser.add_argument("--brats-size", action="store_true", help="cost on one BraTS-size tumour phantom")
    parser.add_argument("--tasks", default="tumor,stroke,ms-new")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--check", action="store_true", help="also run the top component's counterfactual")
    parser.add_argument("--layers", help="rank only these NMF layers (comma-separated; default: all)")
    parser.add_argument("--crop-mm", type=float, help="crop each phantom to ±this many mm around its lesion")
    parser.add_argument("--out", default=str(REPO / "build" / "bench-component-effects"))
    parser.add_argument("--first-phantom", type=int, default=0, metavar="I", help="phantoms I … I+N-1 (default 0)")
    parser.add_argument("--summary", metavar="JSON", nargs="+", help="only print the phantom summary of written "
                        "result files (their phantoms together)")
    args = parser.parse_args()
    if args.summary:
        together: dict[str, list] = {}
        for path in args.summary:
            for task, rows in json.loads(Path(path).read_text(encoding="utf-8"))["phantoms"].items():
                together.setdefault(task, []).extend(rows)
        for task, rows in together.items():
            summarise(task, rows)
        return 0

    from bench_confidence import held_out_case

    from LesionFactorizerLib.demo import bundled_demo_model
    from LesionFactorizerLib.modelfile import read_spec
    from LesionFactorizerLib.phantoms.samples import sample_case

    out = Path(args.out)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    layers = [n.strip() for n in args.layers.split(",")] if args.layers else None
    results: dict = {"device": args.device, "layers": layers or "all", "crop_mm": args.crop_mm,
                     "threads": os.environ.get("OMP_NUM_THREADS"),
                     "load_average_before": os.getloadavg(), "samples": {}, "phantoms": {}}
    for task in tasks if args.samples else []:
        model = bundled_demo_model(task)
        sample = sample_case(task)
        inputs = {n: sample["inputs"][n] for n in read_spec(model).inputs}
        results["samples"][task] = run_case(f"sample {task}", inputs, model, out / "samples" / task, args.device,
                                            args.check, layers)
    for task in tasks if args.phantoms else []:
        model = bundled_demo_model(task)
        spec = read_spec(model)
        spacing = float(spec.preprocessing.spacing[0])
        rows = []
        for i in range(args.first_phantom, args.first_phantom + args.phantoms):
            folder = out / "phantoms" / task / f"case{i}"
            inputs, label = held_out_case(task, HELD_OUT_SEED, i, spacing, folder)
            inputs = {n: p for n, p in inputs.items() if n in spec.inputs}
            if args.crop_mm:
                crop_around_lesion(inputs, label, args.crop_mm)
            rows.append(run_case(f"phantom {task} {i}", inputs, model, folder / "out", args.device, args.check,
                                 layers))
        results["phantoms"][task] = rows
        results.setdefault("phantom_summary", {})[task] = summarise(task, rows)
    if args.brats_size:
        t = time.monotonic()
        inputs = brats_size_case(out / "brats-size")
        print(f"BraTS-size phantom made in {time.monotonic() - t:.0f} s", flush=True)
        results["brats_size"] = run_case("BraTS-size tumor", inputs, bundled_demo_model("tumor"),
                                         out / "brats-size" / "out", args.device, False, layers)
    results["load_average_after"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-component-effects.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
