"""Acceptance 2: NMF component maps of a Factorizer overlay the input in physical space."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import grid, rotation, sample, save_threshold_model

from LesionFactorizerLib import build_model
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.modelfile import make_metadata, save_model_file
from LesionFactorizerLib.pipeline.geometry import Geometry
from LesionFactorizerLib.pipeline.segment import segment_case
from LesionFactorizerLib.core.settings import SegmentSettings

pytestmark = pytest.mark.slow

WIDTHS = (8, 16, 32, 64, 128)
HEAD_DIM = 4   # swin-factorizer-isles


@pytest.fixture(scope="module")
def swin_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("swin")
    torch.manual_seed(0)
    net = build_model("swin-factorizer-isles", widths=WIDTHS)
    meta = make_metadata("stroke", net.config, name="tiny-swin", patch_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0))
    path = folder / "tiny-swin.safetensors"
    save_model_file(path, net, meta, half=True)
    return str(path)


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    geom = grid((34, 38, 20), (1.5, 1.2, 2.5), rotation(2, 20) @ np.diag([-1.0, -1.0, 1.0]))
    paths = {}
    for name in ("dwi", "adc"):
        paths[name] = str(folder / f"{name}.nii.gz")
        sitk.WriteImage(sample(geom), paths[name])
    return paths


def edge_box_in_reference_index(layer: sitk.Image, reference: Geometry) -> tuple[np.ndarray, np.ndarray]:
    corners = Geometry.from_image(layer).corners()
    idx = reference.physical_to_index(corners)
    return idx.min(axis=0), idx.max(axis=0)


def test_every_layer_covers_the_input_within_one_layer_voxel(tmp_path, swin_file, oblique_case):
    out = tmp_path / "out"
    outputs = segment_case(oblique_case, str(out), SegmentSettings(task="stroke", models=[swin_file], device="cpu",
                                                                   components=True, overview=True)).outputs
    reference = Geometry.from_image(sitk.ReadImage(oblique_case["dwi"]))
    index = json.loads((out / "components" / "components.json").read_text(encoding="utf-8"))
    layers = {e["layer"]: e for e in index["layers"]}
    assert list(layers) == ["encoder1", "encoder2", "encoder3", "encoder4", "bridge",
                            "decoder4", "decoder3", "decoder2", "decoder1"]
    for name, entry in layers.items():
        image = sitk.ReadImage(str(out / "components" / entry["file"]))
        stride = entry["stride"]
        level = int(np.log2(stride))
        assert image.GetNumberOfComponentsPerPixel() == WIDTHS[level] // HEAD_DIM == entry["components"]
        assert np.allclose(image.GetSpacing(), [2.0 * stride] * 3)
        assert np.allclose(image.GetDirection(), reference.direction, atol=1e-6)
        assert (sitk.GetArrayViewFromImage(image) >= 0).all()
        lo, hi = edge_box_in_reference_index(image, reference)
        one_layer_voxel = np.asarray(image.GetSpacing()) / np.asarray(reference.spacing)
        ref_lo, ref_hi = np.full(3, -0.5), np.asarray(reference.size) - 0.5
        assert (np.abs(lo - ref_lo) <= one_layer_voxel + 1e-6).all(), (name, lo, ref_lo)
        assert (np.abs(hi - ref_hi) <= one_layer_voxel + 1e-6).all(), (name, hi, ref_hi)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [e["layer"] for e in report["components"]] == list(layers)
    assert report["settings"]["window_nmf"].startswith(("native (", "pytorch ("))  # what ran the NMF
    assert outputs["components"] == str(out / "components")


def test_only_chosen_layers_are_written_and_skipped_layers_have_none(tmp_path, swin_file, oblique_case):
    out = tmp_path / "out"
    segment_case(oblique_case, str(out), SegmentSettings(task="stroke", models=[swin_file], device="cpu",
                                                         component_layers=["bridge", "decoder1"], skip_nmf=["decoder1"],
                                                         overview=False))
    files = sorted(p.name for p in (out / "components").iterdir())
    assert files == ["bridge.nrrd", "components.json"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["settings"]["skip_nmf"] == ["decoder1"]


def test_non_factorizer_models_get_a_message_not_an_error(tmp_path, oblique_case):
    model = save_threshold_model(tmp_path / "thr.safetensors")
    out = tmp_path / "out"
    outputs = segment_case(oblique_case, str(out), SegmentSettings(task="stroke", models=[model], device="cpu",
                                                                   components=True, overview=False)).outputs
    assert "components" not in outputs and not (out / "components").exists()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert "not a Factorizer" in report["components_note"]


@pytest.mark.parametrize("option", ["component_layers", "skip_nmf"])
def test_layers_the_model_lacks_are_refused_before_inference(tmp_path, oblique_case, option):
    """encoder4 is a valid layer name (5-level presets) but this 4-level model has none."""
    torch.manual_seed(0)
    net = build_model("swin-factorizer-isles", widths=WIDTHS[:4])
    path = tmp_path / "four-levels.safetensors"
    save_model_file(path, net, make_metadata("stroke", net.config, name="four-levels", patch_size=(16, 16, 16)))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=f"unknown NMF layer.*encoder4.*--{option.replace('_', '-')}; layers are: "
                                        "encoder1, encoder2, encoder3, bridge"):
        segment_case(oblique_case, str(out), SegmentSettings(task="stroke", models=[str(path)], device="cpu",
                                                             overview=False, **{option: ["encoder4"]}))
    assert not out.exists()
