"""``batch`` overlaps reading, inference and writing of consecutive cases (cli/batch_pipeline.py):
the same outputs as one ``segment`` run per case, at most one case ahead and one behind, cases
recorded in list order, and a stopped run leaves no half-written case."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import REPO, save_threshold_model, write_case

from LesionFactorizerLib import build_model
from LesionFactorizerLib.cli import main
from LesionFactorizerLib.cli.batch import _incomplete
from LesionFactorizerLib.cli.batch_pipeline import CasePipeline
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.modelfile import make_metadata, save_model_file
from LesionFactorizerLib.pipeline.segment import Segmenter
from LesionFactorizerLib.core.settings import SegmentSettings



def tiny_factorizer(path: Path) -> str:
    """A small Swin Factorizer at the cases' own spacing (no resampling), random weights."""
    torch.manual_seed(0)
    model = build_model("swin-factorizer-isles", widths=(8, 16), deep_supervision=1)
    save_model_file(path, model, make_metadata("stroke", model.config, name="tiny", patch_size=(32, 32, 16),
                                               spacing=(1.6, 1.6, 2.5), description="test"))
    return str(path)


@pytest.mark.slow
def test_pipelined_batch_writes_what_one_segment_run_per_case_writes(tmp_path, monkeypatch):
    # A fixed thread count, as a user's --threads sets it: otherwise each run takes the cores the
    # machine's load leaves free (batch's own reader thread counts as load), and a different thread
    # count may sum in another order and change probabilities in their last bits.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    cases = tmp_path / "cases"
    for n in range(3):
        write_case(cases / f"c{n}", names=("sub_dwi", "sub_adc"), size=(30 + 4 * n, 32, 20))
    model = tiny_factorizer(tmp_path / "tiny.safetensors")
    common = ["--model", model, "--no-overview", "--progress", "none", "--probabilities"]
    assert main(["batch", str(cases), "-o", str(tmp_path / "batch"), *common]) == 0
    for n in range(3):
        c = cases / f"c{n}"
        assert main(["segment", "-o", str(tmp_path / "one" / f"c{n}"), *common,
                     "-i", f"dwi={c / 'sub_dwi.nii.gz'}", "-i", f"adc={c / 'sub_adc.nii.gz'}"]) == 0
        batch, one = tmp_path / "batch" / f"c{n}", tmp_path / "one" / f"c{n}"
        for name in ("segmentation.nii.gz", "probabilities.nii.gz", "lesions.csv"):
            assert (batch / name).read_bytes() == (one / name).read_bytes(), name
        a, b = (json.loads((d / "report.json").read_text(encoding="utf-8")) for d in (batch, one))
        for key in ("volumes_ml", "lesion_count", "lesions", "confidence", "preprocessing", "warnings"):
            assert a[key] == b[key], key


class Watched(Segmenter):
    """A real Segmenter whose stages say when they start and end, and can wait for each other."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.log: list[tuple[str, str, str]] = []   # (stage, case folder, "start"/"end")
        self.changed = threading.Condition()
        self.fail_finish: set[str] = set()

    def note(self, stage, staged_or_output, when):
        name = Path(str(getattr(getattr(staged_or_output, "out", None), "final", staged_or_output))).name
        with self.changed:
            self.log.append((stage, name, when))
            self.changed.notify_all()

    def wait_for(self, entry):
        with self.changed:
            assert self.changed.wait_for(lambda: entry in self.log, timeout=120), f"{entry} never came: {self.log}"

    def begin(self, inputs, output, *args):
        self.note("begin", output, "start")
        try:
            return super().begin(inputs, output, *args)
        finally:
            self.note("begin", output, "end")

    def infer(self, staged):
        self.note("infer", staged, "start")
        if staged.out.final.name == "c1":
            self.wait_for(("begin", "c2", "end"))    # only possible if c2 is read during c1's inference
        super().infer(staged)
        self.note("infer", staged, "end")

    def finish(self, staged):
        self.note("finish", staged, "start")
        if staged.out.final.name == "c1":
            self.wait_for(("infer", "c2", "start"))  # only possible if c1 is written during c2's inference
        if staged.out.final.name in self.fail_finish:
            raise UserError(f"{staged.out.final.name}: disk full (test)")
        result = super().finish(staged)
        self.note("finish", staged, "end")
        return result


def test_the_next_case_is_read_and_the_previous_written_during_inference_one_ahead_one_behind(tmp_path):
    model = save_threshold_model(tmp_path / "thr.safetensors")
    items = []
    for n in range(5):
        inputs = write_case(tmp_path / "cases" / f"c{n}")
        items.append((n, f"c{n}", inputs, str(tmp_path / "out" / f"c{n}"), False))
    segmenter = Watched(SegmentSettings(models=[model], device="cpu", overview=False))
    segmenter.fail_finish = {"c3"}
    records = []
    CasePipeline(lambda: segmenter).run(items, lambda *r: records.append(r))

    assert [(i, status) for i, status, _, _ in records] == [(0, "done"), (1, "done"), (2, "done"), (3, "failed"),
                                                            (4, "done")]
    assert "disk full" in records[3][2]
    log = segmenter.log
    for n in range(1, 5):   # at most one case ahead: c(n+1) is read only once c(n−1)'s inference ended
        if n + 1 < 5:
            assert log.index(("infer", f"c{n - 1}", "end")) < log.index(("begin", f"c{n + 1}", "start"))
        # at most one behind: c(n−1) is written before c(n)'s writing starts
        if ("finish", f"c{n - 1}", "end") in log:
            assert log.index(("finish", f"c{n - 1}", "end")) < log.index(("finish", f"c{n}", "start"))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["c0", "c1", "c2", "c4"]   # no temporary folder, no c3
    assert all(_incomplete(out / c) == "" for c in ("c0", "c1", "c2", "c4"))


def test_batch_summary_line_gives_cases_per_hour_and_latency(tmp_path, capsys):
    cases = tmp_path / "cases"
    for n in range(2):
        write_case(cases / f"c{n}", names=("sub_dwi", "sub_adc"))
    model = save_threshold_model(tmp_path / "thr.safetensors")
    for extra in ([], ["--no-overlap"]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["batch", str(cases), "--model", model, "-o", str(out), "--no-overview", "--progress", "none",
                     *extra]) == 0
        err = capsys.readouterr().err
        assert "2 of 2 case(s) segmented" in err and "cases/hour" in err and "latency per case median" in err, err


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_sigint_leaves_only_complete_cases(tmp_path):
    cases = tmp_path / "cases"
    for n in range(4):
        write_case(cases / f"c{n}", names=("sub_dwi", "sub_adc"))
    model = save_threshold_model(tmp_path / "slow.safetensors", delay_s=2.0)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "LesionFactorizerLib", "batch", str(cases), "--model", model,
                             "-o", str(out), "--no-overview", "--progress", "jsonl"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    for line in proc.stdout:   # the first case committed: the second is in inference, the third read ahead
        if json.loads(line)["event"] == "case":
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads(rest.splitlines()[-1])["event"] == "error"
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith(".lesion-factorizer-batch"))
    assert left and left == sorted(p for p in left if not p.startswith(".")), left   # no temporary folder
    assert "c0" in left and "c3" not in left and not (out / "summary.csv").exists()
    assert all(_incomplete(out / c) == "" for c in left)
