"""Components ranked by how well they explain the lesion, and "drop this component" (issue 14.2).

Real files throughout: the bundled stroke sample (cropped around its lesion to stay quick) through
the bundled demo model, the real ``segment`` stages, and the ``counterfactual`` command as the
Slicer worker runs it (a subprocess with ``--progress jsonl``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import HALF_MM, REPO, cropped_stroke_sample, main_in_process

from LesionFactorizerLib.demo import bundled_demo_model
from LesionFactorizerLib.pipeline.groups import difference_map
from LesionFactorizerLib.pipeline.geometry import Geometry
from LesionFactorizerLib.pipeline.ranking import block_mean, model_grid_masks, ranked, score_components
from LesionFactorizerLib.pipeline.segment import segment_case
from LesionFactorizerLib.core.settings import SegmentSettings

pytestmark = pytest.mark.slow


def test_a_map_shaped_like_the_lesion_ranks_first():
    brain = np.zeros((12, 12, 12), np.float32)
    brain[1:11, 1:11, 1:11] = 1
    lesion = np.zeros_like(brain)
    lesion[3:6, 3:6, 3:6] = 1
    rng = np.random.default_rng(0)
    maps = np.stack([
        brain * 1.0,                                   # everywhere: covers the lesion, not specific
        lesion * 3.0 + brain * 0.05,                   # the lesion: covers it and little else
        np.roll(lesion, 5, axis=0) * 2.0,              # a specific blob elsewhere
        rng.random(brain.shape).astype(np.float32) * brain,   # noise
    ])
    rows = score_components(maps, lesion, brain)
    order = [r["component"] for r in ranked(rows)]
    assert order[0] == 1 and order[-1] == 2
    best = rows[1]
    # soft Dice of the map scaled to its robust maximum (3.05): the faint background costs a little
    assert best["coverage"] == pytest.approx(1.0)
    assert best["score"] == pytest.approx(2 * 27 / (27 + 27 + 973 * 0.05 / 3.05), abs=1e-3)
    assert rows[0]["coverage"] == pytest.approx(1.0) and rows[0]["share"] == pytest.approx(27 / 1000)
    # the reported contrast is the plain ratio of means
    assert rows[1]["contrast"] == pytest.approx((3.05 * 27 / 27) / ((3.0 * 27 + 0.05 * 1000) / 1000), rel=1e-3)
    assert score_components(maps, np.zeros_like(lesion), brain) == []   # no lesion: nothing to rank


def test_block_mean_is_the_fraction_of_each_coarse_voxel():
    fine = np.zeros((5, 4, 4), np.float32)
    fine[0, 0, 0] = fine[4, 3, 3] = 1
    coarse = block_mean(fine, 2, (3, 2, 2))
    assert coarse.shape == (3, 2, 2)
    assert coarse[0, 0, 0] == pytest.approx(1 / 8) and coarse[2, 1, 1] == pytest.approx(1 / 8)  # zero-padded end
    assert coarse.sum() == pytest.approx(2 / 8)


@pytest.fixture(scope="module")
def stroke_run(tmp_path_factory):
    """The stroke sample, cropped to ±36 mm around its lesion, through the demo model with components."""
    folder = tmp_path_factory.mktemp("stroke")
    inputs = cropped_stroke_sample(folder, HALF_MM)
    out = folder / "result"
    outputs = segment_case(inputs, str(out), SegmentSettings(models=[str(bundled_demo_model("stroke"))], device="cpu",
                                                             components=True, format="nrrd")).outputs
    return {"out": out, "inputs": inputs, "outputs": outputs, "folder": folder}


def test_every_layer_is_ranked_and_the_best_is_the_top_of_all(stroke_run):
    out = stroke_run["out"]
    index = json.loads((out / "components" / "components.json").read_text(encoding="utf-8"))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    labels = sitk.ReadImage(str(out / "segmentation.nrrd"))
    assert sitk.GetArrayViewFromImage(labels).any(), "the demo model must find the sample's infarct"
    tops = {}
    g = report["preprocessing"]["model_grid"]
    model_grid = Geometry(tuple(g["size"]), tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))
    masks = model_grid_masks(labels, [sitk.ReadImage(p) for p in stroke_run["inputs"].values()], model_grid)
    for entry in index["layers"]:
        rows = entry["ranking"]
        assert sorted(r["component"] for r in rows) == list(range(entry["components"]))
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
        assert all(0 <= r["score"] <= 1 and 0 <= r["coverage"] <= 1 and 0 <= r["share"] <= 1 for r in rows)
        # the stored scores are what the written maps and the written segmentation give
        maps = np.moveaxis(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "components" / entry["file"]))), -1, 0)
        again = score_components(maps, *masks.at_stride(entry["stride"], maps.shape[1:]))
        assert [r["score"] for r in ranked(again)] == pytest.approx([r["score"] for r in rows], abs=2e-4)
        tops[entry["layer"]] = rows[0]["score"]
    best = index["best"]
    assert best["score"] == max(tops.values()) and tops[best["layer"]] == best["score"]
    assert report["components_best"] == best
    assert report["components"][0]["ranking"] == index["layers"][0]["ranking"]
    assert "soft Dice" in index["ranking_method"]


def test_the_overview_shows_the_best_layer_and_its_scores(stroke_run):
    path = Path(stroke_run["outputs"]["overview"])
    image = sitk.ReadImage(str(path))
    assert image.GetSize()[0] > 800   # inputs + labels + four component columns


def _counterfactual(*args, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "counterfactual", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env)


def test_dropping_a_component_from_the_cli_writes_the_changed_lesion_and_the_difference(stroke_run):
    out = stroke_run["out"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    decoder1 = next(e for e in report["components"] if e["layer"] == "decoder1")
    component = decoder1["ranking"][0]["component"]
    proc = _counterfactual(out, "--layer", "decoder1", "--component", component, "--device", "cpu",
                           "--progress", "jsonl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "done" and any(e.get("stage") == "inference" for e in events)
    folder = out / "counterfactual" / f"decoder1-{component}"
    assert Path(events[-1]["outputs"]["dir"]) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["counterfactual.json", "difference.nrrd", "difference.png",
                                                       "segmentation.nrrd"]
    summary = json.loads((folder / "counterfactual.json").read_text(encoding="utf-8"))
    before = sitk.ReadImage(str(out / "segmentation.nrrd"))
    after = sitk.ReadImage(str(folder / "segmentation.nrrd"))
    diff = sitk.ReadImage(str(folder / "difference.nrrd"))
    for image in (after, diff):
        assert Geometry.from_image(image).same_grid(Geometry.from_image(before))
    b, a, d = (sitk.GetArrayFromImage(i) for i in (before, after, diff))
    assert np.array_equal(d, difference_map(b, a))
    ml = float(np.prod(before.GetSpacing())) / 1000
    assert summary["lesion"]["delta_ml"] == pytest.approx(((a > 0).sum() - (b > 0).sum()) * ml, abs=1e-3)
    assert summary["difference_voxels"] == {"added": int((d == 1).sum()), "removed": int((d == 2).sum()),
                                            "relabelled": int((d == 3).sum())}
    assert summary["labels"]["infarct"]["after_ml"] == pytest.approx((a == 1).sum() * ml, abs=1e-3)
    assert summary["ranking"]["component"] == component and summary["layer"] == "decoder1"
    # decoder1 has two components at the demo model's width: without one of them the lesion changes
    assert (d > 0).any()
    # the same command without --layer/--component takes the top-ranked component overall
    proc = _counterfactual(out, "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = report["components_best"]
    assert json.loads(proc.stdout)["dir"] == str(out / "counterfactual" / f"{best['layer']}-{best['component']}")


def test_a_new_segmentation_claims_the_old_counterfactuals():
    from LesionFactorizerLib.pipeline.segment import output_claims

    # derived from the old segmentation: a new run needs --overwrite and then does not keep them
    assert "counterfactual" in output_claims()


@pytest.mark.parametrize("args, message", [
    (["--layer", "decoder9", "--component", "0"], "unknown layer 'decoder9'"),
    (["--layer", "decoder1", "--component", "7"], "--component 7 is out of range"),
    (["--input", "flair=/nowhere.nii.gz"], "had no such input"),
])
def test_bad_requests_are_one_line_errors_and_write_nothing(stroke_run, tmp_path, args, message):
    target = tmp_path / "cf"
    proc = main_in_process("counterfactual", stroke_run["out"], *args, "--output", target, "--progress", "none",
                           "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1
    assert not target.exists()


def test_inputs_must_be_the_files_the_segmentation_used(stroke_run, tmp_path):
    changed = tmp_path / "adc.nii.gz"
    image = sitk.ReadImage(stroke_run["inputs"]["adc"])
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32) * 1.5 + 1.0, str(changed))
    proc = main_in_process("counterfactual", stroke_run["out"], "--input", f"adc={changed}", "--output",
                           tmp_path / "cf", "--progress", "none", "--device", "cpu")
    assert proc.returncode == 2 and "SHA-256 differs" in proc.stderr, proc.stderr
    assert not (tmp_path / "cf").exists()
    proc = main_in_process("counterfactual", tmp_path, "--progress", "none")
    assert proc.returncode == 2 and "has no report.json" in proc.stderr


def test_a_run_on_relative_paths_can_be_revisited_from_another_folder(stroke_run, tmp_path):
    """report.json records where the inputs and the model are absolutely, so the counterfactual finds
    them from any folder."""
    import shutil

    for name, path in stroke_run["inputs"].items():
        shutil.copy(path, tmp_path / f"{name}.nii.gz")
    shutil.copy(bundled_demo_model("stroke"), tmp_path / "stroke.safetensors")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "LesionFactorizerLib", "segment", "-i", "dwi=dwi.nii.gz",
                           "-i", "adc=adc.nii.gz", "-o", "result", "--model", "./stroke.safetensors",
                           "--components", "--device", "cpu", "--progress", "none"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "result" / "report.json").read_text(encoding="utf-8"))
    assert {i["name"]: i["path"] for i in report["inputs"]} == {n: str(tmp_path / f"{n}.nii.gz") for n in ("dwi", "adc")}
    assert report["model"]["path"] == str(tmp_path / "stroke.safetensors")
    proc = _counterfactual(tmp_path / "result", "--layer", "decoder1", "--component", 0, "--device", "cpu",
                           "--progress", "none", "--no-picture")   # cwd: the repository, not the run's folder
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "result" / "counterfactual" / "decoder1-0"
    assert sorted(p.name for p in folder.iterdir()) == ["counterfactual.json", "difference.nii.gz",
                                                       "segmentation.nii.gz"]   # --no-picture: no PNG
    summary = json.loads((folder / "counterfactual.json").read_text(encoding="utf-8"))
    assert "picture" not in summary["outputs"]


# ---- counterfactual trusts nothing it reads (issue 27) -------------------------------------------
def _copy_result(stroke_run, target: Path, edit=None) -> Path:
    """The stroke run's result folder (without its counterfactuals), report.json changed by ``edit``."""
    import shutil

    shutil.copytree(stroke_run["out"], target, ignore=shutil.ignore_patterns("counterfactual"))
    if edit is not None:
        report = json.loads((target / "report.json").read_text(encoding="utf-8"))
        edit(report)
        (target / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return target


def _one_line_error(proc, message):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert message in proc.stderr, proc.stderr


def test_the_output_never_mixes_with_a_segmentation_run(stroke_run, tmp_path):
    result = _copy_result(stroke_run, tmp_path / "result")
    other = _copy_result(stroke_run, tmp_path / "other")
    before = {p.name: p.read_bytes() for p in result.iterdir() if p.is_file()}
    for target, message in [(result, "is the result folder"), (tmp_path, "is the result folder"),
                            (result / "components" / "x", "among its outputs"),
                            (other, "holds a segmentation run")]:
        proc = _counterfactual(result, "--layer", "decoder1", "--component", 0, "-o", target, "--overwrite",
                               "--device", "cpu", "--progress", "none")
        _one_line_error(proc, message)
    assert {p.name: p.read_bytes() for p in result.iterdir() if p.is_file()} == before
    assert not (result / "components" / "x").exists()
    assert sorted(p.name for p in other.iterdir()) == sorted(p.name for p in result.iterdir())


def _set(path, value):
    """An edit of report.json: ``path`` is a list of keys/indices; value ``...`` deletes the last one."""
    def edit(report):
        obj = report
        for key in path[:-1]:
            obj = obj[key]
        if value is ...:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    return edit


@pytest.mark.parametrize("path, value, message", [
    (["outputs", "segmentation"], "../elsewhere/segmentation.nrrd", "not a file inside the result folder"),
    (["outputs", "segmentation"], "/tmp/segmentation.nrrd", "not a file inside the result folder"),
    (["models"], ..., "no checksum of the model list"),
    (["inputs", 0, "sha256"], "", "no checksum of input dwi"),
    (["models", 0, "sha256"], ..., "no checksum of model"),
    (["inputs"], ..., "'inputs' is missing"),
    (["inputs"], "dwi.nii.gz", "'inputs' is str, not list"),
    (["inputs", 0], 5, "inputs[0] is int"),
    (["inputs", 1, "path"], ..., "inputs[1] 'path' is missing"),
    (["model"], ..., "'model' is missing"),
    (["outputs"], ..., "'outputs' is missing"),
    (["outputs", "segmentation"], 3, "outputs 'segmentation' is int, not str"),
    (["settings"], [], "'settings' is list, not dict"),
    (["settings", "overlap"], "0.5", "settings 'overlap' is str, not int or number"),
    (["settings", "tta"], 1, "settings 'tta' is int, not bool"),
    (["task"], ..., "'task' is missing"),
    (["format_version"], "1", "'format_version' is str"),
    (["components_best"], [], "'components_best' is list"),
    (["components", 0, "ranking"], [{"component": "a"}], "'component' is str, not int"),
    (["registration"], "rigid", "'registration' is str"),
])
def test_a_damaged_report_is_a_one_line_error(stroke_run, tmp_path, path, value, message):
    result = _copy_result(stroke_run, tmp_path / "result", _set(path, value))
    (tmp_path / "elsewhere").mkdir()
    proc = _counterfactual(result, "--device", "cpu", "--progress", "none")
    _one_line_error(proc, message)
    assert "Traceback" not in proc.stderr and not (result / "counterfactual").exists()


def test_the_model_is_checked_even_when_the_report_lists_no_models(stroke_run, tmp_path):
    from helpers import save_threshold_model

    other = save_threshold_model(tmp_path / "another.safetensors")

    def swap(report):
        del report["models"]
        report["model"]["path"] = other   # the recorded checksum is still the demo model's
    result = _copy_result(stroke_run, tmp_path / "result", swap)
    proc = _counterfactual(result, "--layer", "decoder1", "--component", 0, "--device", "cpu", "--progress", "none")
    _one_line_error(proc, "--trust-inputs")
    proc = _counterfactual(result, "--layer", "decoder1", "--component", 0, "--device", "cpu", "--progress", "none",
                           "--trust-inputs")
    _one_line_error(proc, "SHA-256 differs")
    assert not (result / "counterfactual").exists()


def test_trust_inputs_runs_on_an_unchecked_input_with_a_warning(stroke_run, tmp_path):
    result = _copy_result(stroke_run, tmp_path / "result", _set(["inputs", 1, "sha256"], ""))
    proc = _counterfactual(result, "--layer", "decoder1", "--component", 0, "--device", "cpu", "--progress", "jsonl",
                           "--no-picture", "--trust-inputs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert any(e["event"] == "warning" and "input adc has no recorded checksum" in e["message"] for e in events)
    summary = json.loads((result / "counterfactual" / "decoder1-0" / "counterfactual.json").read_text("utf-8"))
    assert any("--trust-inputs" in w for w in summary["warnings"])


def test_a_seg_nrrd_run_gets_a_seg_nrrd_counterfactual(stroke_run, tmp_path):
    import slicerio

    from LesionFactorizerLib.pipeline.segnrrd import write_seg_nrrd
    from LesionFactorizerLib.core.tasks import get_task

    def as_seg_nrrd(report):
        report["outputs"]["segmentation"] = "segmentation.seg.nrrd"
    result = _copy_result(stroke_run, tmp_path / "result", as_seg_nrrd)
    labels = sitk.ReadImage(str(result / "segmentation.nrrd"))
    write_seg_nrrd(labels, result / "segmentation.seg.nrrd", get_task("stroke"))   # as `segment --format seg.nrrd`
    (result / "segmentation.nrrd").unlink()
    proc = _counterfactual(result, "--layer", "decoder1", "--component", 0, "--device", "cpu", "--progress", "none",
                           "--no-picture")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = result / "counterfactual" / "decoder1-0"
    assert sorted(p.name for p in folder.iterdir()) == ["counterfactual.json", "difference.nrrd",
                                                       "segmentation.seg.nrrd"]
    seg = slicerio.read_segmentation(str(folder / "segmentation.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == [lb.title for lb in get_task("stroke").labels]
    again = _counterfactual(stroke_run["out"], "--layer", "decoder1", "--component", 0, "--device", "cpu",
                            "--progress", "none", "--no-picture", "-o", tmp_path / "plain")
    assert again.returncode == 0, again.stderr[-3000:]
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "plain" / "segmentation.nrrd")))
    assert np.array_equal(np.transpose(seg["voxels"], (2, 1, 0)), plain)
