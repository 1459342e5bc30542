"""``lesion-factorizer evaluate``: score predicted label files against references.

Writes ``cases.csv`` (one row per case), ``summary.csv`` (mean / SD / median per metric) and, with
``--pred-b``, the same for the second set plus ``wilcoxon.csv`` (paired signed-rank tests).
Conventions (empty masks, HD95, MSSEG-2 lesion detection) are in
``LesionFactorizerLib.evaluation``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

NAME = "evaluate"
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
    parser.add_argument("--hd-empty", choices=("nan", "diagonal", "brats"), default="nan",
                        help="HD95 when exactly one mask is empty: nan = MONAI's convention (excluded from "
                        "means, default), brats = the BraTS challenge's 373.13 mm, diagonal = the image "
                        "diagonal in mm")


def _references(args):
    from LesionFactorizerLib.datasets import discover, task_label_map
    from LesionFactorizerLib.errors import UserError
    from LesionFactorizerLib.evaluation.cohort import find_predictions

    ref = Path(args.ref)
    if args.ref_format == "files":
        if not ref.is_dir():
            raise UserError(f"--ref {ref} is not a folder of label files")
        # the task's own values: anything else (BraTS-2021's ET=4) is refused, not silently dropped
        return {cid: (p, task_label_map(args.task)) for cid, p in find_predictions(ref).items()}

    cases = discover(args.ref_format, ref, args.task)
    return {c.id: (Path(c.label), c.label_map) for c in cases}


def _evaluate_set(pred_dir: Path, refs: dict, task: str, hd_empty) -> list[dict]:
    from LesionFactorizerLib.datasets import convert_labels
    from LesionFactorizerLib.errors import UserError
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
        rows.append({"case": cid, **evaluate_arrays(pred, ref, task, spacing, hd_empty=hd_empty)})
    missing = sorted(set(refs) - set(preds))
    if missing:
        print(f"warning: {len(missing)} reference case(s) have no prediction (first: {missing[0]})")
    return rows


HD95_NOTE = {"nan": "MONAI (a region empty on one side only: NaN, left out of the means)",
             "brats": "BraTS challenge (a region empty on one side only: 373.13 mm)",
             "diagonal": "image diagonal (a region empty on one side only: the image diagonal in mm)"}


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.evaluation.cohort import summarize, wilcoxon_compare, write_csv
    from LesionFactorizerLib.tasks import get_task

    get_task(args.task)
    hd_empty = float("nan") if args.hd_empty == "nan" else args.hd_empty
    refs = _references(args)
    rows_a = _evaluate_set(Path(args.pred), refs, args.task, hd_empty)
    rows_b = _evaluate_set(Path(args.pred_b), refs, args.task, hd_empty) if args.pred_b else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows_a)
    write_csv(rows_a, out / "cases.csv")
    write_csv(summary, out / "summary.csv")
    result = {"cases": len(rows_a), "hd95_empty": args.hd_empty,
              "outputs": [str(out / "cases.csv"), str(out / "summary.csv")]}
    if rows_b is not None:
        write_csv(rows_b, out / "cases_b.csv")
        write_csv(summarize(rows_b), out / "summary_b.csv")
        write_csv(wilcoxon_compare(rows_a, rows_b), out / "wilcoxon.csv")
        result["outputs"] += [str(out / "cases_b.csv"), str(out / "summary_b.csv"), str(out / "wilcoxon.csv")]
    print(f"HD95 convention: {HD95_NOTE[args.hd_empty]}")
    print(f"{'metric':28s} {'n':>4s} {'mean':>10s} {'sd':>10s} {'median':>10s}")
    for s in summary:
        if s["metric"].startswith(("dice", "hd95", "lesion_", "nlp", "vlp")):
            fmt = lambda v: "nan" if math.isnan(v) else f"{v:.4f}"  # noqa: E731
            print(f"{s['metric']:28s} {s['n']:4d} {fmt(s['mean']):>10s} {fmt(s['sd']):>10s} {fmt(s['median']):>10s}")
    print(json.dumps(result))
    return 0
