"""Hierarchical post-processing (thesis 8.3.6) vs arg-max labels: Dice per region, same probabilities.

    .venv/bin/python benchmarks/bench_hierarchical.py                       # demo tumour model, sample + 6 phantoms
    .venv/bin/python benchmarks/bench_hierarchical.py --model m.safetensors --phantoms 10

Each case is segmented once with ``--probabilities`` (the model's own rule); the probability maps are
then decoded both ways by ``OutputSpec`` — ``hierarchical`` (WT by threshold, TC thresholded inside
WT, ET inside TC) and ``argmax`` (the most probable label per voxel) — and scored against the
reference (Dice per region, MONAI convention). Cases: the bundled tumour sample and held-out
phantoms (``lesion-factorizer phantom --task tumor --seed 9000 --spacing 3``, the demo recipe's
test set). Prints a table and writes ``--out/bench-hierarchical.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def cases(out: Path, n: int) -> list[tuple[str, dict, str, dict | None]]:
    from LesionFactorizerLib.datasets import discover
    from LesionFactorizerLib.phantoms.samples import sample_case

    s = sample_case("tumor")
    found = [("sample", s["inputs"], s["label"], None)]
    folder = out / "phantoms"
    if not folder.is_dir():
        subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "phantom", "--task", "tumor", "--n", str(n),
                        "--seed", "9000", "--spacing", "3", "--out", str(folder)], check=True)
    for c in discover("brats", folder, "tumor")[:n]:
        found.append((c.id, {k: v.path for k, v in c.images.items()}, c.label, c.label_map))
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "Resources" / "Models" / "demo-tumor.safetensors"))
    p.add_argument("--phantoms", type=int, default=6)
    p.add_argument("--out", default=str(ROOT / "out" / "bench-hierarchical"))
    a = p.parse_args(argv)
    import SimpleITK as sitk

    from LesionFactorizerLib.datasets import convert_labels
    from LesionFactorizerLib.evaluation.cohort import evaluate_arrays
    from LesionFactorizerLib.modelfile import load_model_file
    from LesionFactorizerLib.core.outputspec import OutputSpec
    from LesionFactorizerLib.pipeline.segment import segment_case
    from LesionFactorizerLib.core.settings import SegmentSettings

    out = Path(a.out)
    loaded = [load_model_file(a.model)]
    spec = loaded[0].spec
    rule = OutputSpec.resolve(spec.task, spec.outputs.activation, spec.outputs.channels, spec.postprocessing.given())
    rows = []
    for cid, inputs, label, label_map in cases(out, a.phantoms):
        res = segment_case({n: inputs[n] for n in spec.inputs}, str(out / cid),
                           SegmentSettings(task="tumor", overwrite=True, overview=False, probabilities=True),
                           loaded=loaded).outputs
        arr = sitk.GetArrayFromImage(sitk.ReadImage(res["probabilities"])).astype(np.float32)
        written = np.moveaxis(arr, -1, 0) if arr.ndim == 4 else arr[None]   # probability_channels order
        maps = dict(zip(rule.probability_channels, written))
        if len(maps) < len(rule.channels):   # softmax: the background map is not written
            maps["background"] = 1.0 - written.sum(axis=0)
        probs = np.stack([maps[c] for c in rule.channels])
        ref_img = sitk.ReadImage(str(label))
        ref = sitk.GetArrayFromImage(ref_img)
        if label_map is not None:
            ref = convert_labels(ref, label_map, str(label))
        spacing = tuple(reversed(ref_img.GetSpacing()))
        row = {"case": cid}
        for mode in ("hierarchical", "argmax"):
            scores = evaluate_arrays(rule.with_overrides(mode=mode).to_labels(probs), ref, "tumor", spacing)
            row.update({f"{mode}_{r}": scores[f"dice_{r}"] for r in ("WT", "TC", "ET")})
        rows.append(row)
        print(cid, {k: round(v, 4) for k, v in row.items() if k != "case"}, flush=True)
        del res
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "case"}
    print(f"\nmodel {Path(a.model).name}, {len(rows)} cases (sample + {len(rows) - 1} phantoms), mean Dice")
    print(f"{'region':8s} {'hierarchical':>13s} {'argmax':>8s}")
    for r in ("WT", "TC", "ET"):
        print(f"{r:8s} {mean[f'hierarchical_{r}']:13.4f} {mean[f'argmax_{r}']:8.4f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-hierarchical.json").write_text(json.dumps({"model": a.model, "cases": rows, "mean": mean}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
