"""Test data for the pipeline tests: analytic phantoms sampled on arbitrary grids, tiny model files.

An analytic phantom (a head-sized ellipsoid with mild texture and one bright spherical lesion at a
known physical point) can be sampled on any grid — oblique, anisotropic, RAS or LPS — so every
geometry claim is checked against physical ground truth, not against another grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from helpers import LESION_CENTER, grid, rotation, sample


def test_phantom_lesion_is_where_it_is_said_to_be():
    geom = grid((30, 30, 30), (1.0, 1.0, 1.0), rotation(2, 30))
    array = sitk.GetArrayFromImage(sample(geom))
    k, j, i = np.nonzero(array == 400.0)
    centroid = geom.index_to_physical(np.stack([i, j, k], axis=-1).mean(axis=0))
    assert np.linalg.norm(centroid - LESION_CENTER) < 0.3
