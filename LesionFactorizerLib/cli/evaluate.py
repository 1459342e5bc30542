"""``lesion-factorizer evaluate``: score predicted label files against references.

Writes ``cases.csv`` (one row per case), ``summary.csv`` (mean / SD / median per metric) and, with
``--pred-b``, the same for the second set plus ``wilcoxon.csv`` (paired signed-rank tests).
Conventions (empty masks, HD95, MSSEG-2 lesion detection) are in
``LesionFactorizerLib.evaluation``; ``--convention brats`` scores as the official BraTS package
(``evaluation/brats.py``). ``evaluation.json`` and the screen name the convention used.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

NAME = "evaluate"
CONVENTIONS = ("monai", "brats")
HELP = "evaluate predictions against reference labels (Dice, HD95, lesion-wise F1, Wilcoxon comparison)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="tumor | stroke | ms-new")
    parser.add_argument("--pred", required=True, help="folder of predictions: CASE.nii.gz files or CASE/segmentation.*")
    parser.add_argument("--ref", required=True, help="reference labels: a folder of CASE.<ext> files, or a data set "
                        "(see --ref-format)")
    parser.add_argument("--ref-format", default="files",
                        choices=("files", "msd-task01", "brats", "isles22", "msseg2", "datalist"),
                        help="layout of --ref; data-set layouts convert their label values to the task's "
                        "(with 'files' the references must already hold the task's label values)")
    parser.add_argument("--pred-b", help="a second prediction folder to compare with (paired Wilcoxon test)")
    parser.add_argument("--out", required=True, help="folder for cases.csv, summary.csv (and wilcoxon.csv)")
    parser.add_argument("--convention", choices=CONVENTIONS, default="monai",
                        help="monai (default): MONAI's Dice/HD95 and the MSSEG-2 lesion detection; brats: the official "
                        "BraTS evaluation package's numbers (brats-evaluation: empty regions NaN, one pooled HD95 "
                        "percentile, 373 for a missing region, lesion-wise Dice/HD95/F1 and lesion counts per "
                        "region), except that distances are in mm where the package ignores the spacing")
    parser.add_argument("--hd-empty", choices=("nan", "diagonal", "brats"), default="nan",
                        help="monai convention: HD95 when exactly one mask is empty: nan = MONAI's (excluded from "
                        "means, default), brats = 373.13 mm, the BraTS grid's diagonal, diagonal = the image "
                        "diagonal in mm")


def _references(args):
    from LesionFactorizerLib.datasets import discover, task_label_map
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.evaluation.cohort import find_predictions

    ref = Path(args.ref)
    if args.ref_format == "files":
        if not ref.is_dir():
            raise UserError(f"--ref {ref} is not a folder of label files")
        # the task's own values: anything else (BraTS-2021's ET=4) is refused, not silently dropped
        return {cid: (p, task_label_map(args.task)) for cid, p in find_predictions(ref).items()}

    cases = discover(args.ref_format, ref, args.task)
    return {c.id: (Path(c.label), c.label_map) for c in cases}


def _evaluate_set(pred_dir: Path, refs: dict, task: str, hd_empty, convention: str = "monai") -> list[dict]:
    from LesionFactorizerLib.datasets import convert_labels
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.evaluation.cohort import evaluate_arrays, find_predictions, read_label, same_grid

    if not pred_dir.is_dir():
        raise UserError(f"prediction folder {pred_dir} does not exist")
    preds = find_predictions(pred_dir)
    common = sorted(set(preds) & set(refs))
    if not common:
        raise UserError(f"no prediction in {pred_dir} matches a reference case id "
                        f"(e.g. predictions {sorted(preds)[:3]}, references {sorted(refs)[:3]})")
    rows = []
    from tqdm import tqdm

    for cid in tqdm(common, desc=f"evaluating {pred_dir.name}", unit="case"):
        ref_path, label_map = refs[cid]
        try:
            pred, _, pimg = read_label(preds[cid])
            raw_ref, spacing, ref_img = read_label(ref_path)
        except (ValueError, RuntimeError, UserError) as exc:
            raise UserError(f"case {cid}: {str(exc).strip().splitlines()[-1]}") from None
        ref = convert_labels(raw_ref, label_map, str(ref_path))
        if not same_grid(pimg, ref_img):
            raise UserError(f"case {cid}: the prediction's grid (size {pimg.GetSize()}, spacing "
                            f"{tuple(round(v, 4) for v in pimg.GetSpacing())}) differs from the reference's (size "
                            f"{ref_img.GetSize()}, spacing {tuple(round(v, 4) for v in ref_img.GetSpacing())}, or "
                            "origin/direction); predictions must be written on the reference image's grid")
        if convention == "brats":
            from LesionFactorizerLib.evaluation.brats import brats_row
            from LesionFactorizerLib.evaluation.cohort import regions_for

            rows.append({"case": cid, **brats_row(pred, ref, regions_for(task), spacing)})
        else:
            rows.append({"case": cid, **evaluate_arrays(pred, ref, task, spacing, hd_empty=hd_empty)})
    missing = sorted(set(refs) - set(preds))
    if missing:
        print(f"warning: {len(missing)} reference case(s) have no prediction (first: {missing[0]})")
    return rows


HD95_NOTE = {"nan": "MONAI (a region empty on one side only: NaN, left out of the means)",
             "brats": "BraTS challenge (a region empty on one side only: 373.13 mm)",
             "diagonal": "image diagonal (a region empty on one side only: the image diagonal in mm)"}


def convention_note(convention: str, hd_empty: str) -> str:
    """The convention line every output of a run carries."""
    if convention == "brats":
        from LesionFactorizerLib.evaluation.brats import SPACING_NOTE

        return f"BraTS challenge (the official brats-evaluation package's definitions; exception: {SPACING_NOTE})"
    return f"MONAI; HD95 when a region is empty on one side only: {HD95_NOTE[hd_empty]}"


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.evaluation.cohort import summarize, wilcoxon_compare, write_csv
    from LesionFactorizerLib.core.tasks import get_task

    get_task(args.task)
    if args.convention == "brats" and args.hd_empty != "nan":
        raise UserError("--hd-empty applies to the monai convention; the brats convention scores a region empty on "
                        "one side only as the official package does (373)")
    hd_empty = float("nan") if args.hd_empty == "nan" else args.hd_empty
    refs = _references(args)
    rows_a = _evaluate_set(Path(args.pred), refs, args.task, hd_empty, args.convention)
    rows_b = _evaluate_set(Path(args.pred_b), refs, args.task, hd_empty, args.convention) if args.pred_b else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the package's cohort means keep an infinite lesion-wise HD95 (no lesion paired) in the mean
    summary = summarize(rows_a, keep_infinite=args.convention == "brats")
    note = convention_note(args.convention, args.hd_empty)
    write_csv(rows_a, out / "cases.csv")
    write_csv(summary, out / "summary.csv")
    result = {"cases": len(rows_a), "convention": args.convention, "convention_note": note,
              "hd95_empty": args.hd_empty if args.convention == "monai" else "brats-evaluation",
              "outputs": [str(out / "cases.csv"), str(out / "summary.csv"), str(out / "evaluation.json")]}
    if rows_b is not None:
        write_csv(rows_b, out / "cases_b.csv")
        write_csv(summarize(rows_b, keep_infinite=args.convention == "brats"), out / "summary_b.csv")
        write_csv(wilcoxon_compare(rows_a, rows_b), out / "wilcoxon.csv")
        result["outputs"] += [str(out / "cases_b.csv"), str(out / "summary_b.csv"), str(out / "wilcoxon.csv")]
    (out / "evaluation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"convention: {note}")
    print(f"{'metric':28s} {'n':>4s} {'mean':>10s} {'sd':>10s} {'median':>10s}")
    for s in summary:
        if s["metric"].startswith(("dice", "hd95", "lesion", "nlp", "vlp", "n_")):
            fmt = lambda v: "nan" if math.isnan(v) else "inf" if math.isinf(v) else f"{v:.4f}"  # noqa: E731
            print(f"{s['metric']:28s} {s['n']:4d} {fmt(s['mean']):>10s} {fmt(s['sd']):>10s} {fmt(s['median']):>10s}")
    print(json.dumps(result))
    return 0
