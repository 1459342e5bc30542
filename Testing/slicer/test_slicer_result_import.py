"""A real worker output, imported through the module's Slicer-free import logic.

The self-test inside Slicer needs Slicer; this runs everything up to the MRML calls in pytest: the
real ``segment`` CLI (as the module launches it: NRRD output, components, probabilities) on a tiny
oblique case, then the module's readers decide segments (names, colours, terminology), probability
channel names and component-layer geometry exactly as LesionFactorizer.py would use them.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
from helpers import REPO


pytestmark = [pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the worker needs torch"),
              pytest.mark.usefixtures("module_lib_importable")]

SPACING = (1.5, 1.2, 2.0)
ORIGIN = (10.0, -20.0, 5.0)
BLOB = (slice(8, 12), slice(10, 16), slice(9, 14))


def _oblique() -> tuple[float, ...]:
    a = np.deg2rad(17.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return tuple((rot @ np.diag([1, -1, 1])).ravel())


@pytest.fixture(scope="module")
def canned(tmp_path_factory):
    """Run the worker once; every test below reads the same output folder."""
    import SimpleITK as sitk

    from LesionFactorizerLib import build_model
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file
    from LesionFactorizerModuleLib import worker

    tmp = tmp_path_factory.mktemp("canned")
    rng = np.random.default_rng(0)
    shape = (20, 28, 24)
    inputs = {}
    for name, base, delta in (("dwi", 100.0, 300.0), ("adc", 800.0, -400.0)):
        array = rng.normal(base, 5, shape).astype(np.float32)
        array[BLOB] += delta
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        image.SetOrigin(ORIGIN)
        image.SetDirection(_oblique())
        inputs[name] = tmp / f"case_{name}.nrrd"
        sitk.WriteImage(image, str(inputs[name]))
    net = build_model("swin-factorizer-isles", in_channels=2, out_channels=1, widths=(8, 16, 32, 64, 128))
    meta = make_metadata("stroke", net.config, name="tiny-swin", spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32),
                         description="random weights, test only")
    model = tmp / "tiny-swin.safetensors"
    save_model_file(model, net, meta)
    out = tmp / "out"
    request = worker.SegmentRequest.of(task="stroke", inputs=inputs, output_dir=out, models=[str(model)], device="cpu",
                                       components=True, probabilities=True, overview=False)
    args = worker.build_segment_command(sys.executable, request)
    result = worker.WorkerProcess(args, env=worker.worker_environment(os.environ, REPO), cwd=tmp).wait(
        poll_interval=0.05)
    assert result.succeeded, worker.failure_message(result) + "\n" + "\n".join(result.log[-15:])
    return {"out": out, "outputs": result.outputs, "inputs": inputs, "model": model}


def _modulelib():
    from LesionFactorizerModuleLib import components, outputs, report, results

    return components, outputs, report, results


def test_outputs_are_nrrd_with_the_reference_geometry_at_full_precision(canned):
    import SimpleITK as sitk

    _, outputs, _, _ = _modulelib()
    files = outputs.find_outputs(canned["out"], canned["outputs"])
    assert files.segmentation.name == "segmentation.nrrd" and files.probabilities.name == "probabilities.nrrd"
    seg, ref = sitk.ReadImage(str(files.segmentation)), sitk.ReadImage(str(canned["inputs"]["dwi"]))
    assert seg.GetDirection() == ref.GetDirection()  # oblique direction survives bit for bit
    assert seg.GetOrigin() == ref.GetOrigin() and seg.GetSize() == ref.GetSize()


def test_segments_get_the_names_colours_and_codes_the_report_lists(canned):
    from LesionFactorizerLib.core.tasks import get_task

    _, outputs, report, results = _modulelib()
    files = outputs.find_outputs(canned["out"], canned["outputs"])
    data = report.read_report(files.report)
    task = get_task("stroke")
    specs = results.segment_specs(task)
    assert [s.name for s in specs] == [lb.title for lb in task.labels]
    for spec, label in zip(specs, task.labels):
        entry = data["labels"][label.name]
        assert entry["value"] == spec.value
        assert entry["terminology"] == spec.terminology and spec.terminology.count("~") == 6
        assert [round(c * 255) for c in spec.color] == entry["color"] and all(0 <= c <= 1 for c in spec.color)
    rows = report.result_rows(data, task.labels, task.regions)
    assert [r.name for r in rows][: len(task.labels)] == [s.name for s in specs]


def test_probability_maps_are_named_by_the_models_channels_on_the_reference_grid(canned):
    import SimpleITK as sitk

    from LesionFactorizerLib.modelfile import read_metadata

    components, outputs, report, results = _modulelib()
    files = outputs.find_outputs(canned["out"], canned["outputs"])
    data = report.read_report(files.report)
    maps = results.probability_maps(files.probabilities, data)
    channels = [c for c in read_metadata(canned["model"])["outputs"]["channels"] if c != "background"]
    assert [name for name, _, _ in maps] == channels
    ref = sitk.ReadImage(str(canned["inputs"]["dwi"]))
    expected = components.ijk_to_ras(ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection())
    for _, array, ijk_to_ras in maps:
        assert array.shape == tuple(reversed(ref.GetSize()))
        assert np.allclose(ijk_to_ras, expected) and ((array >= 0) & (array <= 1)).all()


def test_component_layers_map_voxels_to_the_physical_points_itk_reports(canned):
    import SimpleITK as sitk

    components, outputs, _, _ = _modulelib()
    files = outputs.find_outputs(canned["out"], canned["outputs"])
    layers = components.load_components(files.components)
    assert "encoder1" in layers and "bridge" in layers
    strides = []
    for name, layer in layers.items():
        assert not layer.loaded
        image = sitk.ReadImage(str(layer.path))
        assert image.GetNumberOfComponentsPerPixel() == layer.count
        for index in [(0, 0, 0), tuple(s - 1 for s in image.GetSize()), (1, 0, 1)]:
            lps = np.array(image.TransformIndexToPhysicalPoint([int(i) for i in index]))
            ras = layer.ijk_to_ras @ np.array([*index, 1.0])
            assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4), name
        assert layer.maps.shape == (layer.count, *reversed(image.GetSize()))
        strides.append(layer.stride)
        # the slider's display window is the stored maximum of each map
        assert [layer.window(k)[1] for k in range(layer.count)] == pytest.approx(
            [max(float(m.max()), 0.0) or 1.0 for m in layer.maps])
    assert list(layers) == [n for n in components.NMF_LAYERS if n in layers]


def test_a_damaged_component_index_is_an_error_not_a_guess(canned, tmp_path):
    import shutil

    components, _, _, _ = _modulelib()
    folder = tmp_path / "components"
    shutil.copytree(canned["out"] / "components", folder)
    (folder / "components.json").write_text('{"coordinate_system": "LPS"}', encoding="utf-8")
    with pytest.raises(ValueError, match="missing 'layers'"):
        components.load_components(folder)
    (folder / "components.json").unlink()
    with pytest.raises(ValueError, match="cannot read the component index"):
        components.load_components(folder)


def test_outputs_must_be_what_the_worker_lists(tmp_path):
    _, outputs, _, _ = _modulelib()
    (tmp_path / "segmentation.nrrd").write_bytes(b"x")
    (tmp_path / "report.json").write_text("{}", encoding="utf-8")
    listed = {"segmentation": str(tmp_path / "segmentation.nrrd"), "report": str(tmp_path / "report.json")}
    files = outputs.find_outputs(tmp_path, listed)
    assert files.segmentation == tmp_path / "segmentation.nrrd" and files.components is None
    with pytest.raises(ValueError, match="without a segmentation"):
        outputs.find_outputs(tmp_path, {"report": listed["report"]})  # no guessing from file names
    with pytest.raises(ValueError, match="does not exist"):
        outputs.find_outputs(tmp_path, {**listed, "probabilities": str(tmp_path / "probabilities.nrrd")})
    with pytest.raises(ValueError, match="unknown outputs"):
        outputs.find_outputs(tmp_path, {**listed, "segmentation_file": "x"})


def test_reports_of_another_format_are_refused(tmp_path):
    _, _, report, _ = _modulelib()
    path = tmp_path / "report.json"
    path.write_text('{"labels": {"infarct": {"value": 1, "volume_ml": 2.0}}}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a LesionFactorizer report"):
        report.read_report(path)
