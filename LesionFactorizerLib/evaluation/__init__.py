"""Segmentation evaluation: overlap, surface distance and lesion-wise detection metrics.

Torch-free (numpy / scipy / SimpleITK) because the demo and the inference report use it too.

Conventions (documented once, here, and relied on by the tests):

* **Dice** ``2|A∩B| / (|A|+|B|)``; both masks empty → 1 (thesis eq. 7.18), one empty → 0.
* **HD95** follows MONAI's ``HausdorffDistanceMetric(percentile=95)``: surfaces are the mask
  minus its 6-connected erosion (image border counts as outside), distances are Euclidean in mm
  (voxel spacing), the 95th percentile (linear interpolation) is taken of each directed set and
  the larger of the two is reported. Both empty → 0 (the reference's convention). One empty →
  NaN by default (undefined: excluded from means and counted in the summary's ``n_nan``); pass
  ``empty_value="diagonal"`` to use the image diagonal in mm instead, a worst-case penalty in the
  spirit of the BraTS challenges.
* **Lesion-wise detection** reproduces the MSSEG-2 evaluation (animaSegPerfAnalyzer, Commowick
  et al. 2018): connected components with 18-connectivity (the thesis's statement; anima's own
  ITK filter default is face connectivity, selectable with ``connectivity=6``), components of
  volume smaller than 3 mm³ dropped from both masks (the MSSEG-2 rule, ``lesions.find_lesions``,
  the same definition the inference report uses), and a reference
  lesion counts as detected when (α) more than 10 % of its voxels are covered by predicted
  lesions and (β/γ) the predicted lesions that cover it, taken by decreasing overlap until they
  account for 65 % of the covered voxels, each lie at most 70 % outside the reference mask.
  PPV uses the same rule with the roles swapped. Sensitivity is NaN without reference lesions,
  PPV NaN without predicted lesions; F1 = 2·PPV·SEN/(PPV+SEN), 0 when both are 0, 0 when
  reference lesions exist and none is predicted (all missed), NaN without reference lesions.
* **NLP / VLP** (cases without new lesions): number of predicted lesions (after the same
  small-lesion removal) and predicted volume in mm³.
"""

from LesionFactorizerLib.evaluation.lesions import DetectionResult, detect_lesions, label_lesions
from LesionFactorizerLib.evaluation.overlap import dice, hausdorff95, surface_distances

__all__ = ["dice", "hausdorff95", "surface_distances", "detect_lesions", "label_lesions", "DetectionResult"]
