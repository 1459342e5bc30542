"""The analytic phantom the pipeline tests sample (``helpers.sample``) puts its lesion where it says,
on an oblique grid too: the ground truth the geometry tests compare against."""

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
