"""End to end without Slicer: the module's runner drives the real ``segment`` CLI as its worker.

This is exactly what the Slicer module does (minus exporting/importing nodes): build the command
with the module's builder, run it in a separate interpreter with the module's environment, parse
its JSON lines with the module's parser, locate the outputs and map report.json to table rows and
component maps to browser layers. Inputs are tiny real NIfTI files; the models are real model
files (a deterministic threshold network, and a small random-weight Swin Factorizer for components).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "LesionFactorizer"))

from LesionFactorizerModuleLib import components, report, worker  # noqa: E402
from LesionFactorizerModuleLib.outputs import find_outputs  # noqa: E402
from LesionFactorizerModuleLib.progress import ProgressTracker  # noqa: E402

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("LesionFactorizerLib.cli.segment") is None,
                                 reason="the segment command is not in the library yet"),
              pytest.mark.slow]

SPACING = (1.5, 1.2, 2.0)
ORIGIN = (10.0, -20.0, 5.0)
BLOB = (slice(8, 12), slice(10, 16), slice(9, 14))  # (k, j, i): 4 x 6 x 5 voxels


def _write_case(folder: Path) -> dict[str, Path]:
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    shape = (20, 28, 24)
    dwi = rng.normal(100, 5, shape).astype(np.float32)
    adc = rng.normal(800, 20, shape).astype(np.float32)
    dwi[BLOB] += 300
    adc[BLOB] -= 400
    paths = {}
    for name, array in (("dwi", dwi), ("adc", adc)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        image.SetOrigin(ORIGIN)
        paths[name] = folder / f"case_{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    return paths


def _threshold_model(path: Path) -> Path:
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file
    from LesionFactorizerLib.presets import build_architecture

    kwargs = {"in_channels": 2, "out_channels": 1, "channel": 0, "threshold": 2.0}
    net = build_architecture("threshold-net", kwargs)
    meta = make_metadata("stroke", {"name": "threshold-net", "kwargs": kwargs}, name="threshold-test",
                         spacing=None, patch_size=(16, 16, 16), description="labels DWI z-score > 2")
    save_model_file(path, net, meta)
    return path


def _run(request: worker.SegmentRequest, events: list) -> worker.WorkerResult:
    args = worker.build_segment_command(sys.executable, request)
    env = worker.worker_environment(os.environ, REPO)
    return worker.WorkerProcess(args, env=env, cwd=request.output_dir.parent).wait(
        callback=events.append, poll_interval=0.05)


def test_real_worker_run_is_parsed_and_mapped_to_results(tmp_path):
    inputs = _write_case(tmp_path)
    model = _threshold_model(tmp_path / "threshold-test.safetensors")
    out = tmp_path / "out"
    request = worker.SegmentRequest.of(task="stroke", inputs=inputs, output_dir=out, models=[str(model)],
                                       device="cpu", preset="fast", probabilities=True, overview=False)
    events: list = []
    result = _run(request, events)
    assert result.succeeded, worker.failure_message(result) + "\n" + "\n".join(result.log)

    progress = [e for e in events if e.kind == "progress"]
    assert len(progress) >= 3
    fractions = [e.fraction for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"inference", "write"} <= {e.stage for e in progress}
    assert events[-1].kind == "done"
    tracker = ProgressTracker()
    for e in events:
        tracker.update(e)
    assert tracker.percent == 100

    files = find_outputs(out, result.outputs)
    assert files.segmentation is not None and files.report is not None and files.probabilities is not None
    data = report.read_report(files.report)
    from LesionFactorizerLib.core.tasks import get_task

    rows = report.result_rows(data, get_task("stroke").labels)
    assert [r.name for r in rows] == ["Ischemic infarct"]
    blob_ml = 4 * 6 * 5 * np.prod(SPACING) / 1000.0
    assert rows[0].volume_ml == pytest.approx(blob_ml, rel=0.05)
    assert report.lesion_count(data) == 1

    # the segmentation the module would import is on the reference input's grid
    import SimpleITK as sitk

    seg = sitk.ReadImage(str(files.segmentation))
    assert seg.GetSize() == (24, 28, 20)
    assert np.allclose(seg.GetSpacing(), SPACING) and np.allclose(seg.GetOrigin(), ORIGIN)
    labels = sitk.GetArrayFromImage(seg)
    assert labels[BLOB].all() and labels.sum() == 4 * 6 * 5

    # probability maps load through the same reader as component maps
    maps, ijk_to_ras = components.read_stack(files.probabilities)
    assert maps.shape == (1, 20, 28, 24)
    # named from report.json itself, the model file need not be readable any more
    from LesionFactorizerLib.modelfile import read_metadata

    assert data["probability_channels"] == read_metadata(model)["outputs"]["channels"] != []
    model.unlink()
    assert report.probability_channels(data) == data["probability_channels"]
    assert np.allclose(ijk_to_ras[:3, 3], [-ORIGIN[0], -ORIGIN[1], ORIGIN[2]])


def test_real_worker_error_reaches_the_user_as_one_line(tmp_path):
    inputs = _write_case(tmp_path)
    model = _threshold_model(tmp_path / "threshold-test.safetensors")
    request = worker.SegmentRequest.of(task="stroke", inputs={"dwi": inputs["dwi"]}, output_dir=tmp_path / "out",
                                       models=[str(model)], device="cpu")
    events: list = []
    result = _run(request, events)
    assert result.returncode == 2
    message = worker.failure_message(result)
    assert "adc" in message and "\n" not in message
    assert any(e.kind == "error" for e in events)
    assert not (tmp_path / "out" / "segmentation.nii.gz").exists()


def test_cancelling_the_real_worker_leaves_no_outputs(tmp_path):
    inputs = _write_case(tmp_path)
    model = _threshold_model(tmp_path / "threshold-test.safetensors")
    out = tmp_path / "out"
    request = worker.SegmentRequest.of(task="stroke", inputs=inputs, output_dir=out, models=[str(model)], device="cpu")
    args = worker.build_segment_command(sys.executable, request)
    proc = worker.WorkerProcess(args, env=worker.worker_environment(os.environ, REPO))
    while proc.running:  # cancel as soon as the worker reports its first progress
        if any(e.kind == "progress" for e in proc.poll(timeout=0.05)):
            proc.cancel()
    result = proc.result()
    assert result.cancelled and not result.succeeded
    assert not (out / "segmentation.nii.gz").exists() and not (out / "report.json").exists()


def test_real_worker_component_maps_load_in_the_browser_format(tmp_path):
    from LesionFactorizerLib import build_model
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file

    inputs = _write_case(tmp_path)
    net = build_model("swin-factorizer-isles", in_channels=2, out_channels=1, widths=(8, 16, 32, 64, 128))
    meta = make_metadata("stroke", net.config, name="tiny-swin", spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32),
                         description="random weights, test only")
    model = tmp_path / "tiny-swin.safetensors"
    save_model_file(model, net, meta)
    out = tmp_path / "out"
    request = worker.SegmentRequest.of(task="stroke", inputs=inputs, output_dir=out, models=[str(model)],
                                       device="cpu", preset="balanced", components=True, overview=False)
    result = _run(request, [])
    assert result.succeeded, worker.failure_message(result) + "\n" + "\n".join(result.log[-15:])
    files = find_outputs(out, result.outputs)
    assert files.components is not None
    layers = components.load_components(files.components)
    assert list(layers) == [name for name in worker.NMF_LAYERS if name in layers]  # network order
    assert "encoder1" in layers and "bridge" in layers
    import SimpleITK as sitk

    reference = sitk.ReadImage(str(inputs["dwi"]))
    ref_lo = np.array(reference.GetOrigin())
    ref_hi = np.array(reference.TransformIndexToPhysicalPoint([s - 1 for s in reference.GetSize()]))
    for name, layer in layers.items():
        assert not layer.loaded  # the index alone is read until the browser shows the layer
        assert layer.count >= 1 and layer.maps.dtype == np.float32 and layer.loaded
        assert (layer.maps >= 0).all()
        # display windows come from the maxima the worker stored, and they are the real maxima
        for index in range(layer.count):
            assert layer.window(index)[0] == 0.0
            assert layer.maxima[index] == pytest.approx(float(layer.maps[index].max()), rel=1e-6)
        # the layer grid covers the input in physical space (RAS back to LPS for the comparison)
        k, j, i = layer.maps.shape[1:]
        corners = np.array([[a, b, c, 1] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)])
        lps = (np.diag([-1, -1, 1, 1]) @ layer.ijk_to_ras @ corners.T).T[:, :3]
        spacing = np.abs(layer.ijk_to_ras[:3, :3]).sum(axis=0)
        assert (lps.min(axis=0) <= ref_lo + spacing).all(), name
        assert (lps.max(axis=0) >= ref_hi - spacing).all(), name
