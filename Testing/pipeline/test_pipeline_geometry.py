"""Acceptance 1: the segmentation lands on the reference input's exact grid, at the right place.

Inputs are the analytic phantom sampled on LPS, RAS-like and oblique grids with anisotropic
spacing; the second input is on a different grid. The deterministic threshold network runs
through the real pipeline (files → resampling → crop → sliding windows → labels → files).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import LESION_CENTER, LESION_RADIUS, grid, rotation, sample, save_threshold_model

from LesionFactorizerLib.pipeline.geometry import Geometry
from LesionFactorizerLib.pipeline.segment import segment_case
from LesionFactorizerLib.core.settings import SegmentSettings

pytestmark = pytest.mark.slow

RAS = np.diag([-1.0, -1.0, 1.0])
OBLIQUE = rotation(2, 25) @ rotation(0, -15)

CASES = {
    "lps": (np.eye(3), (1.6, 1.3, 2.4), ".nii.gz"),
    "ras": (RAS, (1.3, 1.7, 2.2), ".nrrd"),
    "oblique": (OBLIQUE, (1.5, 1.2, 2.5), ".mha"),
}


def lesion_centroid(image: sitk.Image) -> np.ndarray:
    labels = sitk.GetArrayFromImage(image)
    k, j, i = np.nonzero(labels)
    geom = Geometry.from_image(image)
    return geom.index_to_physical(np.stack([i, j, k], axis=-1).mean(axis=0))


def run_case(tmp_path, name, channel, model_spacing=None, fmt="nii.gz"):
    direction, spacing, ext = CASES[name]
    ref_geom = grid((40, 44, 22), spacing, direction, center=(0.5, -1.0, 0.3))
    # second input: another grid (other spacing, orientation and centre) over the same anatomy
    other_geom = grid((36, 40, 30), (1.4, 1.4, 1.6), rotation(1, 10) @ RAS, center=(-1.0, 1.5, 0.0))
    ref_path = tmp_path / f"case_dwi{ext}"
    other_path = tmp_path / "case_adc.nii.gz"
    sitk.WriteImage(sample(ref_geom, lesion=(channel == 0)), str(ref_path))
    sitk.WriteImage(sample(other_geom, lesion=(channel == 1)), str(other_path))
    model = save_threshold_model(tmp_path / "thr.safetensors", channel=channel, threshold=3.0, spacing=model_spacing)
    out = tmp_path / "out"
    segment_case({"dwi": str(ref_path), "adc": str(other_path)}, str(out),
                 SegmentSettings(task="stroke", models=[model], device="cpu", format=fmt, overview=False))
    return sitk.ReadImage(str(ref_path)), out


@pytest.mark.parametrize("name", list(CASES))
def test_segmentation_is_on_the_reference_grid_and_the_lesion_where_it_was_placed(tmp_path, name):
    reference, out = run_case(tmp_path, name, channel=0)
    seg = sitk.ReadImage(str(out / "segmentation.nii.gz"))
    assert seg.GetSize() == reference.GetSize()
    assert np.allclose(seg.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    assert np.allclose(seg.GetOrigin(), reference.GetOrigin(), atol=1e-5)
    assert np.allclose(seg.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert seg.GetPixelID() == sitk.sitkUInt8
    centroid = lesion_centroid(seg)
    assert np.linalg.norm(centroid - LESION_CENTER) < 0.5 * max(reference.GetSpacing())
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["lesion_count"] == 1
    assert np.allclose(report["lesions"][0]["centroid_lps"], centroid, atol=1e-3)
    assert np.allclose(report["lesions"][0]["centroid_ras"], centroid * [-1, -1, 1], atol=1e-3)
    sphere_ml = 4 / 3 * np.pi * LESION_RADIUS**3 / 1000
    assert report["volumes_ml"]["infarct"] == pytest.approx(sphere_ml, rel=0.35)
    assert any("resampled onto dwi's grid" in w for w in report["warnings"])  # the second input was


def test_lesion_seen_only_on_the_second_input_is_mapped_through_physical_space(tmp_path):
    # The lesion exists only in the ADC image, which lies on another (rotated, RAS) grid.
    reference, out = run_case(tmp_path, "oblique", channel=1)
    seg = sitk.ReadImage(str(out / "segmentation.nii.gz"))
    assert Geometry.from_image(seg).same_grid(Geometry.from_image(reference))
    assert np.linalg.norm(lesion_centroid(seg) - LESION_CENTER) < 0.6 * max(reference.GetSpacing())
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert any("resampled onto dwi's grid" in w for w in report["warnings"])


def test_model_spacing_resampling_is_undone_exactly(tmp_path):
    # the model works on a 2 mm grid; labels still come back on the reference grid, in place
    reference, out = run_case(tmp_path, "ras", channel=0, model_spacing=(2.0, 2.0, 2.0), fmt="nrrd")
    seg = sitk.ReadImage(str(out / "segmentation.nrrd"))
    assert seg.GetSize() == reference.GetSize()
    assert seg.GetOrigin() == reference.GetOrigin() and seg.GetDirection() == reference.GetDirection()
    assert np.linalg.norm(lesion_centroid(seg) - LESION_CENTER) < 1.0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["preprocessing"]["resampled"] is True
    assert report["preprocessing"]["model_grid"]["spacing"] == [2.0, 2.0, 2.0]
