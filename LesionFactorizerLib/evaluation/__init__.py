"""Segmentation evaluation: overlap, surface distance and lesion-wise detection metrics.

Torch-free (numpy / scipy / SimpleITK) because the demo and the inference report use it too.

Conventions (documented once, here, and relied on by the tests):

* **Dice** ``2|A∩B| / (|A|+|B|)``; both masks empty → 1 (thesis eq. 7.18), one empty → 0.
* **HD95** — two conventions; every table says which one it uses (``evaluate`` prints it and
  writes it into its result; training logs ``val/hd95_*`` in the MONAI one):

  - *MONAI* (default): ``HausdorffDistanceMetric(percentile=95)``: surfaces are the mask minus its
    6-connected erosion (image border counts as outside), distances are Euclidean in mm (voxel
    spacing), the 95th percentile (linear interpolation) of each directed set, the larger of the
    two reported. Both empty → 0 (the reference's convention). One empty → NaN (undefined:
    excluded from means and counted in the summary's ``n_nan``).
  - *BraTS challenge* (``empty_value="brats"``, ``evaluate --hd-empty brats``): the same distances,
    but one empty mask → 373.13 mm (the diagonal of the BraTS 240×240×155 1 mm grid), so a missed
    or hallucinated region is penalised in the mean instead of dropped from it. BraTS data are on
    a 1 mm grid, where mm and voxel units agree.
  ``empty_value="diagonal"`` uses this image's diagonal in mm instead (a penalty for other grids).
* **Lesion-wise detection** reproduces the MSSEG-2 evaluation (animaSegPerfAnalyzer, Commowick
  et al. 2018):

  - *Lesions* are connected components with **18-connectivity** (faces and edges, the thesis's
    statement; anima's own ITK filter default is face connectivity, selectable with
    ``connectivity=6``).
  - *Small lesions*: components of at most ⌊3 mm³ / voxel volume⌋ voxels are dropped from both
    masks (anima keeps a component when its voxel count is *greater* than that floor: at 1 mm a
    3-voxel component is dropped). ``pipeline/lesions.find_lesions`` applies it, the same definition the
    inference report uses.
  - *Detection*: a reference lesion counts as detected when (α) more than 10 % of its voxels are
    covered by predicted lesions and (β/γ) the predicted lesions that cover it, taken by
    decreasing overlap until they account for 65 % of the covered voxels, each lie at most 70 %
    outside the reference mask. PPV uses the same rule with the roles swapped.
  - *F1 convention*: per case, F1 = 2·PPV·SEN/(PPV+SEN) from that case's lesion-wise sensitivity
    (SEN = detected reference lesions / reference lesions) and PPV (= predicted lesions that hit a
    reference lesion / predicted lesions); a cohort's F1 is the mean of the per-case values (not
    F1 of pooled counts). Sensitivity is NaN without reference lesions, PPV NaN without predicted
    lesions; F1 is 0 when both are 0, 0 when reference lesions exist and none is predicted (all
    missed), NaN without reference lesions (such cases are scored by NLP / VLP).
* **NLP / VLP** (cases without new lesions): number of predicted lesions (after the same
  small-lesion removal) and predicted volume in mm³.
"""

from LesionFactorizerLib.evaluation.lesions import DetectionResult, detect_lesions
from LesionFactorizerLib.evaluation.overlap import BRATS_EMPTY_HD95, HD95_EMPTY, dice, hausdorff95, surface_distances
from LesionFactorizerLib.pipeline.lesions import label_lesions

__all__ = ["BRATS_EMPTY_HD95", "HD95_EMPTY", "dice", "hausdorff95", "surface_distances", "detect_lesions", "label_lesions", "DetectionResult"]
