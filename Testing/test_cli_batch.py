"""``batch``: case folders and datalists, per-case failures, summary, resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import SimpleITK as sitk
from test_pipeline_data import save_threshold_model, write_case

from LesionFactorizerLib.cli import main


def read_summary(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


def test_case_folders_failures_do_not_stop_the_cohort_and_resume_skips_done(tmp_path, capsys):
    cases = tmp_path / "cases"
    for name in ("case01", "case02", "case03"):
        write_case(cases / name, names=("sub_dwi", "sub_adc"))
    broken = sitk.GetImageFromArray(np.full((24, 40, 36), 5.0, np.float32))
    sitk.WriteImage(broken, str(cases / "case03" / "sub_adc.nii.gz"))     # constant ADC: bad input
    model = save_threshold_model(tmp_path / "thr.safetensors")
    out = tmp_path / "out"
    args = ["batch", str(cases), "--model", model, "-o", str(out), "--no-overview", "--progress", "jsonl"]
    assert main(args) == 2
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["status"] for e in events if e["event"] == "case"] == ["done", "done", "failed"]
    assert events[-1]["event"] == "done"
    summary = read_summary(out / "summary.csv")
    assert summary["case01"]["status"] == "done" and summary["case03"]["status"] == "failed"
    assert "constant" in summary["case03"]["error"]
    assert int(summary["case01"]["lesion_count"]) == 1 and float(summary["case01"]["infarct_ml"]) > 0
    assert (out / "case02" / "segmentation.nii.gz").is_file() and not (out / "case03").exists()

    stamp = (out / "case01" / "report.json").stat().st_mtime_ns
    assert main([*args, "--resume"]) == 2
    summary = read_summary(out / "summary.csv")
    assert [summary[c]["status"] for c in ("case01", "case02", "case03")] == ["skipped", "skipped", "failed"]
    assert summary["case01"]["infarct_ml"]          # resumed cases keep their numbers in the summary
    assert (out / "case01" / "report.json").stat().st_mtime_ns == stamp


def test_csv_and_json_datalists_with_relative_paths(tmp_path):
    write_case(tmp_path / "data" / "a")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    datalist = tmp_path / "data" / "list.csv"
    datalist.write_text("case_id,dwi,adc\nA1,a/dwi.nii.gz,a/adc.nii.gz\n", encoding="utf-8")
    assert main(["batch", str(datalist), "--model", model, "-o", str(tmp_path / "o1"), "--no-overview",
                 "--progress", "none"]) == 0
    assert read_summary(tmp_path / "o1" / "summary.csv")["A1"]["status"] == "done"
    jlist = tmp_path / "data" / "list.json"
    jlist.write_text(json.dumps([{"case_id": "J1", "inputs": {"dwi": "a/dwi.nii.gz", "adc": "a/adc.nii.gz"}},
                                 {"case_id": "J2", "inputs": {"dwi": "a/dwi.nii.gz"}}]), encoding="utf-8")
    assert main(["batch", str(jlist), "--model", model, "-o", str(tmp_path / "o2"), "--no-overview",
                 "--progress", "none"]) == 2
    summary = read_summary(tmp_path / "o2" / "summary.csv")
    assert summary["J1"]["status"] == "done" and "missing input adc" in summary["J2"]["error"]
