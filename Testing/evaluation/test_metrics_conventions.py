"""Metric conventions of the challenges: MSSEG-2's small-lesion rule (animaSegPerfAnalyzer) and the
BraTS challenge's HD95 for a region missing on one side."""

import numpy as np
import pytest

from LesionFactorizerLib.evaluation import BRATS_EMPTY_HD95, hausdorff95
from LesionFactorizerLib.evaluation.cohort import evaluate_arrays
from LesionFactorizerLib.pipeline.lesions import find_lesions, max_removed_voxels


def _blobs(sizes, shape=(8, 8, 40)):
    """Separate straight rods of the given voxel counts (never touching, even diagonally)."""
    m = np.zeros(shape, bool)
    for i, n in enumerate(sizes):
        m[1 + 3 * (i % 2), 1 + 3 * (i // 2) % 6, 1:1 + n] = True
    return m


@pytest.mark.parametrize("spacing, dropped, kept", [
    ((1.0, 1.0, 1.0), 3, 4),          # 3 mm³ / 1 mm³ = 3: anima keeps more than 3 voxels
    ((1.0, 1.0, 0.75), 4, 5),         # 3 / 0.75 = 4 exactly
    ((1.0, 1.0, 0.8), 3, 4),          # 3 / 0.8 = 3.75 → floor 3
    ((0.1, 0.1, 0.1), None, None),    # 3 / 0.001 = 3000 despite floating-point rounding
])
def test_small_lesion_rule_keeps_components_above_the_floor_as_anima(spacing, dropped, kept):
    if dropped is None:
        assert max_removed_voxels(3.0, spacing) == 3000
        return
    assert max_removed_voxels(3.0, spacing) == dropped
    found = find_lesions(_blobs([dropped, kept]), spacing, 18, 3.0)
    assert found.count == 1 and found.removed == 1
    assert int((found.labels == 1).sum()) == kept


def test_min_volume_zero_keeps_every_component():
    assert find_lesions(_blobs([1, 2]), None, 18, 0.0).count == 2


def test_brats_hd95_convention_penalises_a_missed_region_instead_of_dropping_it():
    ref = np.zeros((10, 10, 10), bool)
    ref[3:6, 3:6, 3:6] = True
    empty = np.zeros_like(ref)
    assert np.isnan(hausdorff95(empty, ref, (1.0, 1.0, 1.0)))                  # MONAI: undefined
    assert hausdorff95(empty, ref, (1.0, 1.0, 1.0), empty_value="brats") == pytest.approx(373.13, abs=0.01)
    assert BRATS_EMPTY_HD95 == pytest.approx(np.sqrt(240 ** 2 + 240 ** 2 + 155 ** 2), abs=1e-4)
    assert hausdorff95(ref, empty, None, empty_value="brats") == BRATS_EMPTY_HD95      # hallucinated region
    assert hausdorff95(empty, empty, None, empty_value="brats") == 0.0
    # both present: the same distances in either convention
    pred = np.roll(ref, 2, axis=0)
    assert hausdorff95(pred, ref, (1.0, 1.0, 1.0), empty_value="brats") == hausdorff95(pred, ref, (1.0, 1.0, 1.0))
    # a cohort table: the per-case row uses the convention asked for
    label = ref.astype(np.int16) * 3                  # ET only
    row = evaluate_arrays(np.zeros_like(label), label, "tumor", (1.0, 1.0, 1.0), hd_empty="brats")
    assert row["hd95_ET"] == BRATS_EMPTY_HD95
