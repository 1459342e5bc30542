"""Random patch sampling and augmentation (MONAI dictionary transforms on "image"/"label").

Order and ranges follow thesis appendix 7.6.1 (and the reference's MSSEG-2 pipeline for the
bias field, placed before the contrast change). One deliberate change: the reference warped the
label bilinearly and re-thresholded it; we warp the integer label map with nearest neighbour,
which keeps nested and multi-class labels consistent by construction.
"""

from __future__ import annotations

import math

import numpy as np
from monai import transforms as T

from .config import AugmentationConfig


# Optional keys of a sample: the label's lesion / background voxel indices, as MONAI would compute
# them on every draw (see ``data.PatchDataset``).
FG_INDICES, BG_INDICES = "fg_indices", "bg_indices"


def train_transforms(patch_size, pos_fraction: float | None, aug: AugmentationConfig):
    keys = ["image", "label"]
    patch = [int(p) for p in patch_size]
    ts = [T.SpatialPadd(keys, spatial_size=patch, mode="constant")]
    if pos_fraction is None:
        ts.append(T.RandSpatialCropd(keys, roi_size=patch, random_size=False))
    else:
        # pos/neg are relative weights: pos_fraction = 2/3 reproduces "66 % of patches centred on
        # a lesion voxel" (chapter 6); patches of lesion-free cases fall back to random centres.
        ts.append(T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch,
                                           pos=pos_fraction, neg=1.0 - pos_fraction, num_samples=1,
                                           allow_smaller=False, fg_indices_key=FG_INDICES,
                                           bg_indices_key=BG_INDICES))
    if aug.affine:
        r = math.radians(aug.affine.rotate_deg)
        ts.append(T.RandAffined(keys, prob=aug.affine.prob, rotate_range=(r, r, r),
                                scale_range=(aug.affine.scale,) * 3, mode=("bilinear", "nearest"),
                                padding_mode="zeros", spatial_size=patch))
    if aug.flip:
        ts += [T.RandFlipd(keys, prob=aug.flip.prob, spatial_axis=a) for a in aug.flip.axes]
    if aug.noise and aug.noise.variance is not None:
        ts.append(VarianceNoised("image", prob=aug.noise.prob, variance=aug.noise.variance))
    elif aug.noise:
        ts.append(T.RandGaussianNoised("image", prob=aug.noise.prob, mean=0.0, std=aug.noise.std))
    if aug.smooth:
        s = tuple(aug.smooth.sigma)
        ts.append(T.RandGaussianSmoothd("image", sigma_x=s, sigma_y=s, sigma_z=s, prob=aug.smooth.prob))
    if aug.scale_intensity:
        ts.append(T.RandScaleIntensityd("image", factors=aug.scale_intensity.factor,
                                        prob=aug.scale_intensity.prob))
    if aug.shift_intensity:
        ts.append(T.RandShiftIntensityd("image", offsets=aug.shift_intensity.offset,
                                        prob=aug.shift_intensity.prob))
    if aug.bias_field:
        ts.append(T.RandBiasFieldd("image", degree=aug.bias_field.degree,
                                   coeff_range=tuple(aug.bias_field.coeff), prob=aug.bias_field.prob))
    if aug.contrast:
        ts.append(T.RandAdjustContrastd("image", gamma=tuple(aug.contrast.gamma), prob=aug.contrast.prob))
    ts.append(T.ToTensord(keys, track_meta=False))
    return T.Compose(ts)


class VarianceNoised(T.RandGaussianNoised):
    """RandGaussianNoised with the noise *variance* drawn from U(0, variance) (thesis 7.6.1),
    i.e. std = √U(0, variance) — larger, and spread differently, than reading the range as a std."""

    def __init__(self, keys, prob: float, variance: float):
        super().__init__(keys, prob=prob, mean=0.0, std=0.0, sample_std=False)
        self.rand_gaussian_noise = _VarianceNoise(variance)


class _VarianceNoise(T.RandGaussianNoise):
    def __init__(self, variance: float):
        super().__init__(prob=1.0, mean=0.0, std=0.0, sample_std=False)
        self.variance = float(variance)

    def randomize(self, img, mean=None) -> None:
        T.RandomizableTransform.randomize(self, None)
        if not self._do_transform:
            return
        std = math.sqrt(self.R.uniform(0, self.variance))
        self.noise = self.R.normal(self.mean if mean is None else mean, std, size=img.shape).astype(np.float32)
