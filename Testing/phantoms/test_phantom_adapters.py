"""Phantom data sets are read by the library's public-layout adapters like real data."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from LesionFactorizerLib.phantoms import generate_case, write_dataset

pytest.importorskip("nilearn")
from LesionFactorizerLib import datasets  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("task, fmt", [("tumor", "brats"), ("stroke", "isles22"), ("ms-new", "msseg2")])
def test_adapter_reads_phantoms_with_product_labels(tmp_path, task, fmt):
    write_dataset(task, 2, str(tmp_path), seed=7, spacing=4, preview=True)  # previews/ must not confuse it
    cases = datasets.discover(fmt, tmp_path, task)
    assert len(cases) == 2
    case = cases[0]
    ref = generate_case(task, 7, 0, spacing=4)
    assert set(case.images) == set(ref.images)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(case.label))
    np.testing.assert_array_equal(datasets.convert_labels(raw, case.label_map), ref.label)
