"""Is the per-lesion confidence meaningful? TP vs FP lesions on held-out phantoms (issue 14).

    python benchmarks/bench_confidence.py                        # 6 cases per task, mirror TTA, CPU
    python benchmarks/bench_confidence.py --tasks stroke --n 3   # a quick look
    python benchmarks/bench_confidence.py --json results.json    # also keep every lesion's numbers
    python benchmarks/bench_confidence.py --shift mild           # held-out AND shifted: real errors
    python benchmarks/bench_confidence.py --shift snr=10,bias=0.3,spacing_scale=1.25

Held-out cases: phantoms generated with ``--seed`` (default 7100) at each bundled demo model's
spacing. The demo models were trained on seed 100, scored on seed 9000, and the bundled samples
use seeds 0/13/1 (``phantoms.samples``), so none of these cases was seen in training or used to
pick a checkpoint. Every case runs through the real ``Segmenter`` (files in, report.json out)
with the bundled demo model and TTA (4 passes), so ``detected_fraction`` and ``agreement`` are
measured too.

Unshifted, the demo models make almost no false positives on these phantoms (none in 18 cases), so
TP and FP cannot be compared there. ``--shift`` makes the held-out scans differ from training the
way clinical scans do, and says so in its first line and in the JSON (``shift``): extra Rician
noise, an extra coil bias field per image, a coarser scan (``SHIFTS`` below, presets ``mild`` and
``hard``). It changes only the images, never the label, anatomy or lesions; the model, the
threshold and the confidence measures are untouched.

Measured (3 cases per task, TTA, CPU, 2026-12-03; AUROC of TP vs FP; "volume" is the size baseline):

    shift  seed  task     TP   FP   confidence mean TP / FP   AUROC: confidence  uncertainty  agreement  volume
    mild   7100  pooled   11   21   0.863 / 0.631                    0.90         0.90         0.87      0.81
    mild   7200  pooled   21   99   0.707 / 0.600                    0.71         0.71         0.60      0.82
    mild   both  tumor    19   29   0.709 / 0.624                    0.65         0.64         0.69      0.62
    mild   both  stroke   11   90   0.822 / 0.597                    0.89         0.90         0.76      0.87
    mild   both  ms-new    2    1   0.916 / 0.871                    0.50         0.50         1.00      0.75
    mild   both  pooled   32  120   0.761 / 0.606                    0.77         0.77         0.68      0.80
    hard   7100  pooled   11   32   0.691 / 0.594                    0.70         0.73         0.48      0.80

False positives have the lower mean confidence in every row, but the separation is moderate and
mostly a matter of size: the false positives are specks of a few voxels (median 0.016-0.09 ml),
which sit near the threshold, while fragments of a broken-up true lesion count as true positives
and look the same (seed 7200 tumor case 2: 23 pieces, 11 touching the tumour). Pooled, lesion
volume alone (0.80) separates as well as confidence (0.77); within a task confidence edges out
size only a little (tumor 0.65 vs 0.62, stroke 0.89 vs 0.87). Under ``hard`` the tumor model is confidently wrong (a 156 ml false "tumour" 54 mm from the
true one at confidence 0.83) and the ms-new model finds nothing: confidence flags doubtful lesions,
not a model failing on scans unlike its training data.

Matching: a predicted lesion (a row of report.json ``lesions``, relabelled from segmentation.<ext>
with the lesion rule of :mod:`LesionFactorizerLib.pipeline.lesions`) is a true positive when it
overlaps a ground-truth lesion voxel, else a false positive. Printed per measure and class: n,
mean, median, quartiles, and the AUROC of telling TP from FP by that measure (Mann-Whitney; 0.5 is
chance; for ``uncertainty`` lower means TP, so it is scored reversed). ``volume_ml`` is summarised
the same way as a baseline: a measure that only restated lesion size would match its AUROC.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LesionFactorizerLib.core.reportspec import OUTPUTS  # noqa: E402

MEASURES = ("confidence", "uncertainty", "detected_fraction", "agreement")
# Lesion size is no confidence measure, but small components are mostly boundary (probability near
# the threshold), so it is summarised as the baseline a confidence measure should beat.
BASELINE = ("volume_ml",)
HIGHER_IS_TP = {"confidence": True, "uncertainty": False, "detected_fraction": True, "agreement": True,
                "volume_ml": True}


# Distribution shifts (``--shift``): what differs from the phantoms the demo models were trained on.
# Applied to the generated scanner-unit images only (never to the label), with a random stream of
# its own, so a case's anatomy and lesions are the unshifted case's and the truth stays exact.
#   snr            extra Rician noise, sigma = (median brain intensity of that image) / snr; the
#                  generator's own noise (SNR 15-45 against white matter) stays underneath
#   bias           an extra receive-coil bias field (phantoms.fields.bias_field, log-std = bias),
#                  one per image, so channels and the two MS time points disagree; not on ADC, a
#                  ratio of two images taken with the same coil, where it cancels
#   spacing_scale  the case is generated at this multiple of the model's spacing (coarser scan,
#                  which the Segmenter resamples to the model's grid)
SHIFTS: dict[str, dict[str, float]] = {
    "none": {},
    "mild": {"snr": 15.0, "bias": 0.25},
    "hard": {"snr": 8.0, "bias": 0.45, "spacing_scale": 1.5},
}
SHIFT_KEYS = ("snr", "bias", "spacing_scale")
_SHIFT_STREAM = 0x5817   # the shift's random stream, apart from the generator's three


def parse_shift(text: str) -> dict[str, float]:
    """A preset name (``SHIFTS``) or ``key=value,...`` over ``SHIFT_KEYS``."""
    text = text.strip()
    if text in SHIFTS:
        return dict(SHIFTS[text])
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in SHIFT_KEYS:
            raise ValueError(f"--shift {text!r}: use one of {', '.join(SHIFTS)} or key=value pairs of "
                             f"{', '.join(SHIFT_KEYS)}")
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"--shift {key}: {value!r} is not a number") from None
        if not out[key] > 0:
            raise ValueError(f"--shift {key} must be positive, got {value}")
    return out


def describe_shift(shift: dict[str, float]) -> str:
    if not shift:
        return "none (phantoms as generated: the training distribution, unseen seed)"
    parts = []
    if "snr" in shift:
        parts.append(f"extra Rician noise at SNR {shift['snr']:g} of each image's median brain intensity")
    if "bias" in shift:
        parts.append(f"extra coil bias field of log-std {shift['bias']:g} per image (not ADC)")
    if "spacing_scale" in shift:
        parts.append(f"scanned at {shift['spacing_scale']:g} x the model's spacing")
    return "; ".join(parts)


def shift_images(images: dict[str, np.ndarray], shift: dict[str, float], rng: np.random.Generator) -> dict:
    """The images with ``shift``'s noise and bias: int16 in, int16 out, zero outside the brain
    (the union of the images' non-zero voxels, as the generator skull-strips them)."""
    from LesionFactorizerLib.phantoms.fields import bias_field, rician

    if not ("snr" in shift or "bias" in shift):
        return images
    brain = np.zeros(next(iter(images.values())).shape, bool)
    for array in images.values():
        brain |= array != 0
    out = {}
    for name in sorted(images):   # a fixed order: the same draws whatever the dict's order
        img = images[name].astype(np.float32)
        if "bias" in shift and name != "adc":
            img *= bias_field(rng, img.shape, float(shift["bias"]))
        if "snr" in shift:
            img = rician(rng, img, float(np.median(images[name][brain])) / float(shift["snr"]))
        out[name] = (np.clip(np.rint(img), 0, 32767) * brain).astype(np.int16)
    return out


def held_out_case(task: str, seed: int, index: int, spacing: float, folder: Path,
                  shift: dict[str, float] | None = None) -> tuple[dict, Path]:
    """One phantom (with ``shift`` applied) written as NIfTI files: ({input name: path}, label path)."""
    from LesionFactorizerLib.phantoms.generate import generate_case
    from LesionFactorizerLib.phantoms.layouts import write_nifti

    shift = shift or {}
    case = generate_case(task, seed, index, spacing=spacing * float(shift.get("spacing_scale", 1.0)))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(task.encode()), int(index), _SHIFT_STREAM])
    images = shift_images(case.images, shift, rng)
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for name, array in images.items():
        inputs[name] = folder / f"{name}.nii.gz"
        write_nifti(array, case.geometry, str(inputs[name]))
    label = folder / "label.nii.gz"
    write_nifti(case.label, case.geometry, str(label))
    return {k: str(v) for k, v in inputs.items()}, label


def classify(report, seg_path: str, label_path: Path) -> list[dict]:
    """Each reported lesion with its measures and whether it overlaps the truth."""
    import SimpleITK as sitk

    from LesionFactorizerLib.pipeline.lesions import find_lesions

    seg = sitk.ReadImage(seg_path)
    labels = sitk.GetArrayFromImage(seg)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) > 0
    settings = report.settings
    # the same lesion rule and settings as the run: ids are the report's ids (largest first)
    found = find_lesions(labels > 0, seg.GetSpacing(), int(settings["connectivity"]), 0.0)
    rows = []
    for lesion in report.lesions:
        mask = found.labels == lesion["id"]
        if int(mask.sum()) != lesion["voxels"]:
            raise RuntimeError(f"lesion {lesion['id']} of {seg_path}: {int(mask.sum())} voxels, report says "
                               f"{lesion['voxels']}")
        rows.append({"tp": bool(truth[mask].any()), "volume_ml": lesion["volume_ml"],
                     **{m: lesion.get(m) for m in MEASURES}})
    return rows


def describe(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(med), "q1": float(q1), "q3": float(q3)}


def auroc(positives: list[float], negatives: list[float]) -> float | None:
    """P(score of a random TP > score of a random FP), ties count half."""
    if not positives or not negatives:
        return None
    p, n = np.asarray(positives, float)[:, None], np.asarray(negatives, float)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def summarise(rows: list[dict]) -> dict:
    out = {"lesions": len(rows), "tp": sum(r["tp"] for r in rows), "fp": sum(not r["tp"] for r in rows)}
    for m in MEASURES + BASELINE:
        tp = [r[m] for r in rows if r["tp"] and r.get(m) is not None]
        fp = [r[m] for r in rows if not r["tp"] and r.get(m) is not None]
        sign = 1.0 if HIGHER_IS_TP[m] else -1.0
        out[m] = {"tp": describe(tp), "fp": describe(fp),
                  "auroc": auroc([sign * v for v in tp], [sign * v for v in fp])}
    return out


def fmt(d: dict) -> str:
    if not d.get("n"):
        return "n=0"
    return (f"n={d['n']:3d} mean {d['mean']:.3f} median {d['median']:.3f} "
            f"IQR [{d['q1']:.3f}, {d['q3']:.3f}]")


def show(name: str, s: dict) -> None:
    print(f"\n== {name}: {s['lesions']} predicted lesions, {s['tp']} TP, {s['fp']} FP")
    for m in MEASURES + BASELINE:
        a = s[m]["auroc"]
        print(f"  {m:17s} TP {fmt(s[m]['tp'])}\n  {'':17s} FP {fmt(s[m]['fp'])}"
              + (f"\n  {'':17s} AUROC (TP vs FP) {a:.3f}" if a is not None else ""), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="tumor,stroke,ms-new")
    parser.add_argument("--n", type=int, default=6, help="held-out cases per task")
    parser.add_argument("--seed", type=int, default=7100, help="phantom seed (not 100: training)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: the model's); a lower "
                        "one makes more, weaker lesions, false positives among them")
    parser.add_argument("--shift", default="none", help="distribution shift of the held-out cases: "
                        f"{', '.join(SHIFTS)} or key=value pairs of {', '.join(SHIFT_KEYS)} (see SHIFTS)")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="one pass (no pass agreement)")
    parser.add_argument("--work", help="keep cases and outputs here (default: a temporary folder)")
    parser.add_argument("--json", help="write every lesion's numbers and the summaries here")
    args = parser.parse_args()
    if args.seed == 100:
        parser.error("seed 100 made the demo models' training phantoms; choose another")
    try:
        shift = parse_shift(args.shift)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"held-out seed {args.seed}, shift: {describe_shift(shift)}", flush=True)

    from LesionFactorizerLib.demo import bundled_demo_model
    from LesionFactorizerLib.modelfile import read_spec
    from LesionFactorizerLib.pipeline.segment import Segmenter
    from LesionFactorizerLib.core.settings import SegmentSettings

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-confidence-"))
    everything: dict = {"seed": args.seed, "cases_per_task": args.n, "tta": args.tta, "threshold": args.threshold,
                        "shift": shift, "shift_description": describe_shift(shift), "tasks": {}}
    all_rows = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        model = bundled_demo_model(task)
        spacing = float(read_spec(model).preprocessing.spacing[0])
        segmenter = Segmenter(SegmentSettings(task=task, models=[str(model)], device=args.device, tta=args.tta,
                                              threshold=args.threshold, overview=False, overwrite=True))
        rows, t0 = [], time.perf_counter()
        for i in range(args.n):
            inputs, label = held_out_case(task, args.seed, i, spacing, work / task / f"case{i}", shift)
            inputs = {n: p for n, p in inputs.items() if n in segmenter.spec.inputs}
            result = segmenter.segment(inputs, work / task / f"case{i}" / "out", overwrite=True)
            case_rows = classify(result.report, result.outputs[OUTPUTS.segmentation.key], label)
            for r in case_rows:
                r.update(task=task, case=i)
            rows += case_rows
            print(f"[{task}] case {i}: {len(case_rows)} lesion(s), {sum(r['tp'] for r in case_rows)} TP",
                  flush=True)
        everything["tasks"][task] = {"seconds": round(time.perf_counter() - t0, 1), **summarise(rows)}
        show(task, everything["tasks"][task])
        all_rows += rows
    everything["all"] = summarise(all_rows)
    everything["rows"] = all_rows
    show("all tasks", everything["all"])
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1), encoding="utf-8")
    if not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
