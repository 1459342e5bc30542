"""``batch``: case folders and datalists, per-case failures, summary, resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_pipeline_data import save_threshold_model, write_case

from LesionFactorizerLib.cli import main

REPO = Path(__file__).resolve().parents[1]


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


def test_training_datalist_columns_label_and_fold_are_not_inputs(tmp_path, capsys):
    write_case(tmp_path / "data" / "a")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    datalist = tmp_path / "data" / "train.csv"
    datalist.write_text("id,dwi,adc,label,fold\nA1,a/dwi.nii.gz,a/adc.nii.gz,a/label.nii.gz,0\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["batch", str(datalist), "--model", model, "-o", str(out), "--no-overview",
                 "--progress", "jsonl"]) == 0
    assert read_summary(out / "summary.csv")["A1"]["status"] == "done"
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["stage"] == "batch" for e in progress)
    assert [e["fraction"] for e in progress] == sorted(e["fraction"] for e in progress)
    assert progress[-1]["fraction"] == 1.0 and events[-1]["event"] == "done"
    assert events[-1]["outputs"]["summary"] == str(out / "summary.csv")


def test_case_folders_pick_only_image_files(tmp_path):
    from LesionFactorizerLib.cli.batch import read_cases
    from LesionFactorizerLib.tasks import get_task

    paths = write_case(tmp_path / "cases" / "c1", names=("sub_dwi", "sub_adc"))
    (tmp_path / "cases" / "c1" / "dwi_notes.txt").write_text("not an image", encoding="utf-8")
    (tmp_path / "cases" / "c1" / "adc_params.json").write_text("{}", encoding="utf-8")
    cases = read_cases(tmp_path / "cases", get_task("stroke"))
    assert cases == [("c1", {"dwi": paths["sub_dwi"], "adc": paths["sub_adc"]})]


@pytest.mark.parametrize("case_id", ["../escape", "a/b", "..", "sub\\x"])
def test_case_ids_that_are_not_plain_folder_names_are_refused(tmp_path, case_id):
    write_case(tmp_path / "data" / "a")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    jlist = tmp_path / "data" / "list.json"
    jlist.write_text(json.dumps([{"case_id": case_id, "inputs": {"dwi": "a/dwi.nii.gz", "adc": "a/adc.nii.gz"}}]),
                     encoding="utf-8")
    out = tmp_path / "deep" / "out"
    proc = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "batch", str(jlist), "--model", model,
                           "-o", str(out), "--no-overview", "--progress", "none"],
                          cwd=REPO, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "cannot be used as a folder name" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "deep").exists() and not (tmp_path / "escape").exists()


def test_resume_redoes_a_case_whose_report_is_unreadable(tmp_path, capsys):
    cases = tmp_path / "cases"
    for name in ("c1", "c2"):
        write_case(cases / name, names=("sub_dwi", "sub_adc"))
    model = save_threshold_model(tmp_path / "thr.safetensors")
    out = tmp_path / "out"
    args = ["batch", str(cases), "--model", model, "-o", str(out), "--no-overview", "--progress", "jsonl"]
    assert main(args) == 0
    report = out / "c1" / "report.json"
    report.write_text(report.read_text(encoding="utf-8")[:40], encoding="utf-8")   # truncated, e.g. disk full
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    summary = read_summary(out / "summary.csv")
    assert summary["c1"]["status"] == "done" and summary["c2"]["status"] == "skipped"
    assert json.loads(report.read_text(encoding="utf-8"))["task"] == "stroke"
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(e["event"] == "warning" and "c1" in e["message"] and "unreadable" in e["message"] for e in events)
