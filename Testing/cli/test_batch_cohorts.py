"""Datalists from spreadsheets, resume that checks inputs, and cohorts split across jobs and
devices (issue 13 item 6 and "cohorts beyond one machine")."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import save_threshold_model, write_case

from LesionFactorizerLib.cli import main
from LesionFactorizerLib.datalist import read_datalist


def read_summary(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Five cases whose lesions differ in size (so a result under the wrong id is visible)."""
    root = tmp_path_factory.mktemp("cohort")
    for n in range(5):
        write_case(root / "data" / f"p{n}", size=(30 + 2 * n, 32, 20))
    return root, save_threshold_model(root / "thr.safetensors")


def csv_list(path, ids, bom=False, delimiter=","):
    lines = [delimiter.join(["case_id", "dwi", "adc"])]
    lines += [delimiter.join([case_id, f"data/p{n}/dwi.nii.gz", f"data/p{n}/adc.nii.gz"]) for case_id, n in ids]
    path.write_text(("\ufeff" if bom else "") + "\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("bom, delimiter", [(True, ","), (True, ";"), (False, ";")])
def test_excel_csv_keeps_its_case_ids(cohort, bom, delimiter):
    root, _ = cohort
    path = csv_list(root / f"excel-{bom}-{ord(delimiter)}.csv", [("PAT-A", 0), ("PAT-B", 1)], bom, delimiter)
    entries = read_datalist(path, ["dwi", "adc"], required=["dwi", "adc"])
    assert [e.id for e in entries] == ["PAT-A", "PAT-B"]
    assert entries[1].inputs["adc"].endswith("p1/adc.nii.gz")


def test_utf16_and_non_utf8_datalists(tmp_path):
    path = tmp_path / "list.csv"
    path.write_bytes("case_id,dwi,adc\nX,a.nii.gz,b.nii.gz\n".encode("utf-16"))
    assert [e.id for e in read_datalist(path, ["dwi", "adc"])] == ["X"]
    path.write_bytes("case_id,dwi,adc\nJos\xe9,a.nii.gz,b.nii.gz\n".encode("cp1252"))
    with pytest.raises(Exception, match="not UTF-8"):
        read_datalist(path, ["dwi", "adc"])


def test_resume_after_reordering_the_list_never_reports_one_patient_under_another(cohort, tmp_path, capsys):
    root, model = cohort
    out = tmp_path / "out"
    base = ["--model", model, "-o", str(out), "--no-overview", "--progress", "jsonl"]
    first = csv_list(root / "first.csv", [("A", 0), ("B", 1)], bom=True)
    assert main(["batch", str(first), *base]) == 0
    volumes = {k: float(v["infarct_ml"]) for k, v in read_summary(out / "summary.csv").items()}
    capsys.readouterr()
    swapped = csv_list(root / "swapped.csv", [("A", 1), ("B", 0)], bom=True)     # ids now name the other files
    assert main(["batch", str(swapped), *base, "--resume"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["status"] for e in events if e["event"] == "case"] == ["done", "done"]
    assert sum("not reused" in e.get("message", "") for e in events if e["event"] == "warning") == 2
    summary = read_summary(out / "summary.csv")
    assert float(summary["A"]["infarct_ml"]) == volumes["B"] and float(summary["B"]["infarct_ml"]) == volumes["A"]
    report = json.loads((out / "A" / "report.json").read_text(encoding="utf-8"))
    assert all(len(i["sha256"]) == 64 for i in report["inputs"])
    capsys.readouterr()
    assert main(["batch", str(swapped), *base, "--resume"]) == 0                         # unchanged now: skipped
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["status"] for e in events if e["event"] == "case"] == ["skipped", "skipped"]


def test_shards_split_the_list_disjointly_and_merge_into_one_summary(cohort, tmp_path, capsys):
    root, model = cohort
    datalist = csv_list(root / "all.csv", [(f"C{n}", n) for n in range(5)])
    out = tmp_path / "out"
    base = ["batch", str(datalist), "--model", model, "-o", str(out), "--no-overview", "--progress", "jsonl"]
    assert main([*base, "--merge"]) == 2          # nothing to merge yet
    seen = []
    for k in (1, 2):
        capsys.readouterr()
        assert main([*base, "--shard", f"{k}/2"]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        seen.append([e["case_id"] for e in events if e["event"] == "case"])
        if k == 1:
            assert main([*base, "--merge"]) == 2   # shard 2/2 missing: refused, no partial summary
            assert not (out / "summary.csv").exists()
    assert seen == [["C0", "C2", "C4"], ["C1", "C3"]]
    assert main([*base, "--merge"]) == 0
    summary = read_summary(out / "summary.csv")
    assert list(summary) == [f"C{n}" for n in range(5)] and {r["status"] for r in summary.values()} == {"done"}
    bigger = csv_list(root / "more.csv", [(f"C{n}", n) for n in range(5)] + [("C5", 0)])
    assert main(["batch", str(bigger), *base[2:], "--merge"]) == 2   # the list no longer matches the shards


@pytest.mark.slow
def test_one_worker_per_device_on_cpu(cohort, tmp_path, capsys):
    root, model = cohort
    datalist = csv_list(root / "dev.csv", [(f"D{n}", n) for n in range(3)])
    out = tmp_path / "out"
    assert main(["batch", str(datalist), "--model", model, "-o", str(out), "--no-overview", "--progress", "jsonl",
                 "--devices", "cpu,cpu"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(e["case_id"] for e in events if e["event"] == "case") == ["D0", "D1", "D2"]
    assert events[-1]["event"] == "done"
    summary = read_summary(out / "summary.csv")
    assert list(summary) == ["D0", "D1", "D2"] and all(r["status"] == "done" for r in summary.values())
    single = tmp_path / "single"
    assert main(["batch", str(datalist), "--model", model, "-o", str(single), "--no-overview", "--progress",
                 "none"]) == 0
    assert {k: v["infarct_ml"] for k, v in read_summary(single / "summary.csv").items()} == \
        {k: v["infarct_ml"] for k, v in summary.items()}


def test_a_gpu_index_that_does_not_exist_is_refused_before_any_work(cohort, tmp_path, capsys):
    import torch

    root, model = cohort
    datalist = csv_list(root / "gpu.csv", [("G0", 0)])
    missing = torch.cuda.device_count()
    assert main(["batch", str(datalist), "--model", model, "-o", str(tmp_path / "out"), "--progress", "jsonl",
                 "--devices", f"cpu,{missing}"]) == 2
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "error" and f"no GPU {missing}" in events[-1]["message"]
    assert not any(e["event"] == "case" for e in events)
