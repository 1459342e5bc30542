"""``batch``: case folders and datalists, per-case failures, summary, resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import REPO, main_in_process, save_threshold_model, write_case

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
    from LesionFactorizerLib.core.tasks import get_task

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
    proc = main_in_process("batch", jlist, "--model", model, "-o", out, "--no-overview", "--progress", "none")
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


# ---- case folders, merge checks and one batch per output folder (issue 27) ----------------------
def _json_list(path, ids, case):
    path.write_text(json.dumps([{"case_id": i, "inputs": case} for i in ids]), encoding="utf-8")
    return path


def test_case_ids_get_safe_bounded_folders_and_the_summary_maps_them(tmp_path, capsys):
    from LesionFactorizerLib.cli.batch import case_folder

    case = write_case(tmp_path / "data" / "a")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    ids = ["P1", "summary.csv", "summary.shard-1-of-2.csv", "x" * 240, "y" * 300, "é" * 150, ".hidden", "CON", "a:b", "tab\there"]
    out = tmp_path / "out"
    assert main(["batch", str(_json_list(tmp_path / "list.json", ids, case)), "--model", model, "-o", str(out),
                 "--no-overview", "--progress", "none"]) == 0
    summary = read_summary(out / "summary.csv")
    assert list(summary) == ids and {r["status"] for r in summary.values()} == {"done"}
    folders = [summary[i]["folder"] for i in ids]
    assert folders[0] == "P1" and len(set(folders)) == len(ids)
    for case_id, folder in zip(ids, folders):
        assert folder == case_folder(case_id) and (out / folder / "segmentation.nii.gz").is_file()
        assert len(folder.encode("utf-8")) <= 120 and not folder.startswith(".")
        assert not any(c in folder for c in '<>:"/\\|?*\t')
    assert folders[3].startswith("x" * 100) and folders[1] != "summary.csv" and folders[7].lower() != "con"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted([*folders, "summary.csv"])


def test_ids_that_would_share_a_folder_are_refused(tmp_path, capsys):
    case = write_case(tmp_path / "data" / "a")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    assert main(["batch", str(_json_list(tmp_path / "list.json", ["Pat1", "PAT1"], case)), "--model", model,
                 "-o", str(tmp_path / "out"), "--no-overview", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "would share the output folder" in err
    assert not (tmp_path / "out" / "Pat1").exists()


@pytest.fixture
def sharded(tmp_path):
    """Three cases split in two shards, both finished; returns (argv without --merge, output folder)."""
    case = write_case(tmp_path / "data" / "a")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    out = tmp_path / "out"
    base = ["batch", str(_json_list(tmp_path / "list.json", ["A", "B", "C"], case)), "--model", model, "-o",
            str(out), "--no-overview", "--progress", "none"]
    for k in (1, 2):
        assert main([*base, "--shard", f"{k}/2"]) == 0
    return base, out


def _rewrite(path, edit, encoding="utf-8"):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows, columns = edit(rows)
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("damage, message", [
    (lambda p, out: _rewrite(p, lambda r: (r, [c for c in r[0] if c != "status"])), "lacks the column(s) status"),
    (lambda p, out: _rewrite(p, lambda r: ([{**r[0], "error": "Jos\xe9"}, *r[1:]], list(r[0])), "cp1252"),
     "cannot be read as a summary"),
    (lambda p, out: _rewrite(p, lambda r: ([{**r[0], "folder": "../elsewhere"}, *r[1:]], list(r[0]))),
     "not '../elsewhere'"),
    (lambda p, out: _rewrite(p, lambda r: ([{**r[0], "status": "finished"}, *r[1:]], list(r[0]))),
     "is not a case row"),
    (lambda p, out: __import__("shutil").rmtree(out / "A"), "has no report.json"),
    (lambda p, out: (out / "A" / "segmentation.nii.gz").unlink(), "lacks segmentation.nii.gz"),
    (lambda p, out: (out / "A" / "report.json").write_text("{\"format\": 3", encoding="utf-8"), "cannot read"),
])
def test_merge_checks_every_shard_summary_and_every_finished_case(sharded, capsys, damage, message):
    base, out = sharded
    damage(out / "summary.shard-1-of-2.csv", out)   # shard 1 holds A and C
    capsys.readouterr()
    assert main([*base, "--merge"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (out / "summary.csv").exists()


def test_resume_redoes_an_incomplete_case_and_the_merge_keeps_the_folder_column(sharded):
    base, out = sharded
    (out / "A" / "segmentation.nii.gz").unlink()
    assert main([*base, "--merge"]) == 2
    assert main([*base, "--shard", "1/2", "--resume"]) == 0     # resume redoes the incomplete case
    assert read_summary(out / "summary.shard-1-of-2.csv")["A"]["status"] == "done"
    assert main([*base, "--merge"]) == 0
    summary = read_summary(out / "summary.csv")
    assert [(r["case_id"], r["folder"], r["status"]) for r in summary.values()] == \
        [("A", "A", "done"), ("B", "B", "done"), ("C", "C", "skipped")]


def _locked_by_another(lock):
    import fcntl

    if not lock.exists():
        return False
    with open(lock, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


def _start_batch(args):
    return subprocess.Popen([sys.executable, "-m", "LesionFactorizerLib", "batch", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")


def _wait_for_lock(proc, lock):
    import time

    deadline = time.monotonic() + 120
    while not _locked_by_another(lock):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform == "win32", reason="the test watches the POSIX lock")
@pytest.mark.slow
def test_one_batch_at_a_time_per_output_folder(tmp_path):
    case = write_case(tmp_path / "data" / "a")
    fast = save_threshold_model(tmp_path / "fast.safetensors")
    stuck = save_threshold_model(tmp_path / "stuck.safetensors", delay_s=600.0)   # killed once it has the folder
    out = tmp_path / "out"
    datalist = str(_json_list(tmp_path / "list.json", ["A", "B", "C"], case))

    def batch(model, *extra):
        return [datalist, "--model", model, "-o", str(out), "--no-overview", "--progress", "none", *extra]

    def run(*args):
        return subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "batch", *args], cwd=REPO,
                              capture_output=True, text=True, encoding="utf-8", timeout=300)

    lock = out / ".lesion-factorizer-batch.lock"
    first = _start_batch(batch(stuck))
    _wait_for_lock(first, lock)
    second = run(*batch(fast))
    assert second.returncode == 2 and second.stderr.startswith("error: ") and second.stderr.count("\n") == 1
    assert "is in use by another `lesion-factorizer batch` run" in second.stderr
    assert not (out / "summary.csv").exists() and not (out / "A").exists()   # the second wrote nothing
    first.kill()   # SIGKILL: no clean-up of its own; the kernel drops its lock
    first.communicate(timeout=60)
    done = run(*batch(fast))
    assert done.returncode == 0, done.stderr
    assert {r["status"] for r in read_summary(out / "summary.csv").values()} == {"done"}

    # the shards of one split share the folder; a whole run does not join them
    shard = _start_batch(batch(stuck, "--shard", "1/2", "--overwrite"))
    _wait_for_lock(shard, lock)
    other = run(*batch(fast, "--shard", "2/2", "--overwrite"))
    assert other.returncode == 0, other.stderr
    whole = run(*batch(fast, "--resume"))
    assert whole.returncode == 2 and "in use by another" in whole.stderr, whole.stderr
    shard.kill()
    shard.communicate(timeout=60)
    again = run(*batch(fast, "--resume"))
    assert again.returncode == 0, again.stderr
    assert {r["status"] for r in read_summary(out / "summary.csv").values()} == {"skipped"}
