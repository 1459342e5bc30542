"""Do the components the overlap ranking puts first also change the lesion? Effect ranking, measured.

    .venv/bin/python benchmarks/bench_component_effects.py --samples             # the three bundled samples
    .venv/bin/python benchmarks/bench_component_effects.py --phantoms 2          # 2 held-out phantoms per task
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
  (``segment`` without the effects), as a ratio.

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


def analyse(report: dict) -> dict:
    """Both rankings of every layer of one run: correlations, largest effect, costs."""
    lesion_ml = sum(report["volumes_ml"].values())
    per_layer, pooled_score, pooled_effect = {}, [], []
    for entry in report["components"]:
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
    best = report.get("components_best_effect")
    timings = report["timings_s"]
    rest = timings["total"] - timings["effects"]
    return {"lesion_ml": round(lesion_ml, 3), "best_effect": best, "best_overlap": report.get("components_best"),
            "largest_effect_share": (round(best["changed_ml"] / lesion_ml, 4) if best and lesion_ml > 0 else None),
            "spearman_pooled": spearman(pooled_score, pooled_effect),
            "spearman_median_layer": (float(np.median(v)) if (v := [L["spearman"] for L in per_layer.values()
                                                                     if L["spearman"] is not None]) else None),
            "effects_s": timings["effects"], "segment_s": round(rest, 3),
            "ratio": round(timings["effects"] / rest, 1) if rest > 0 else None, "layers": per_layer}


def run_case(name: str, inputs: dict, model: Path, out: Path, device: str, check: bool,
             layers: list[str] | None = None) -> dict:
    from LesionFactorizerLib.pipeline.counterfactual import run_counterfactual
    from LesionFactorizerLib.pipeline.segment import segment_case
    from LesionFactorizerLib.pipeline.settings import SegmentSettings

    segment_case(inputs, str(out), SegmentSettings(models=[str(model)], device=device, components=True, effects=True,
                                                   component_layers=layers, overwrite=True))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    row = analyse(report)
    best = row["best_effect"]
    if check and best:
        summary = json.loads(Path(run_counterfactual(out, best["layer"], best["component"], device=device,
                                                     overwrite=True, picture=False)["summary"]).read_text())
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
          f"median per layer {median}; effects {row['effects_s']:.1f} s vs segment {row['segment_s']:.1f} s (x{row['ratio']})", flush=True)
    if "counterfactual_check" in row:
        print(f"    counterfactual of the top component: {row['counterfactual_check']}", flush=True)
    print("    per layer: " + ", ".join(f"{n} K={v['components']} {v['effects_s']:.1f}s" for n, v in row["layers"].items()),
          flush=True)


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
    parser.add_argument("--out", default=str(REPO / "build" / "bench-component-effects"))
    args = parser.parse_args()

    from bench_confidence import held_out_case

    from LesionFactorizerLib.demo import bundled_demo_model
    from LesionFactorizerLib.modelfile import read_spec
    from LesionFactorizerLib.phantoms.samples import sample_case

    out = Path(args.out)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    layers = [n.strip() for n in args.layers.split(",")] if args.layers else None
    results: dict = {"device": args.device, "layers": layers or "all", "threads": os.environ.get("OMP_NUM_THREADS"),
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
        for i in range(args.phantoms):
            folder = out / "phantoms" / task / f"case{i}"
            inputs, _label = held_out_case(task, HELD_OUT_SEED, i, spacing, folder)
            inputs = {n: p for n, p in inputs.items() if n in spec.inputs}
            rows.append(run_case(f"phantom {task} {i}", inputs, model, folder / "out", args.device, args.check,
                                 layers))
        results["phantoms"][task] = rows
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
