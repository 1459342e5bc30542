"""Registering inputs from another session (the ms-new baseline FLAIR) onto the reference input.

New-lesion detection compares the two time points voxel by voxel, so a baseline that is not
co-registered with the follow-up turns every tissue edge into a "new lesion". Real follow-up pairs
come straight from the scanner in their own positions; this stage checks the pair and, when it is
misaligned (``--register auto``) or when asked (``rigid`` / ``affine``), registers the baseline onto
the follow-up with SimpleITK before any preprocessing, and resamples it (registered, or only on
another grid) onto the follow-up's grid once (no second interpolation by the grid alignment that
follows), with a quintic B-spline that keeps its noise close to the follow-up's
(:func:`resample_onto` says why not linear), and with its background kept exactly zero, as the
follow-up's (:func:`shared_background` says why that decides the new-lesion F1). The model then
compares the pair on the follow-up's own grid, the follow-up untouched, so the outputs need no
resampling back (``report.json["registration"]["space"]``).

How (all on copies smoothed and resampled to :data:`WORKING_SPACING_MM`, so a whole head takes
seconds on two cores):

* head masks: Otsu threshold, hole filling, largest component (skull-stripped or not);
* the transform: Mattes mutual information (fixed sampling seed, so runs repeat exactly), an
  :class:`Euler3DTransform` started from the better of identity and the intensity moments
  (:class:`CenteredTransformInitializer` ``MOMENTS``; the latter rescues scans whose origins
  differ), two resolution levels; ``affine`` adds an affine stage started from the rigid result;
* the check: the estimated transform's displacement of the head (mean and maximum over the
  follow-up's head voxels). ``auto`` registers when the mean exceeds :data:`AUTO_THRESHOLD_MM`
  and the similarity improves — co-registered pairs keep sub-millimetre residuals, and leaving them
  alone avoids an interpolation; ``never`` only warns;
* the quality figures, before and after: normalised mutual information (NMI, 1 … 2), Pearson
  correlation of the intensities inside the follow-up's head mask, head-mask Dice where both scans
  have data, and how much of the follow-up's head the baseline covers;
* the gate (:func:`gate_notes`), on the pair as the model will compare it, registered or not: a
  pair whose correlation or head Dice stays low is refused (``never``: a warning), so a baseline
  rotated by 90° is never "already aligned"; a registration that passes but lowers the NMI is
  ``poor``, a warning;
* partial coverage: where the baseline has no data (outside its field of view) nothing can be
  called new, so the segmentation masks those voxels (:func:`outside_view`, ``Case.uncovered``).

The report entry (``report.json["registration"]``) is documented in :func:`register_inputs`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.pipeline.geometry import Geometry
from LesionFactorizerLib.core.settings import REGISTER_MODES

WORKING_SPACING_MM = 3.0      # registration grid: coarse enough for seconds, fine enough for sub-mm rigid fits
AUTO_THRESHOLD_MM = 1.0       # mean head displacement above which ``auto`` registers
POOR_CORRELATION = 0.5        # intensity correlation inside the head of the pair compared below this: refused
POOR_HEAD_DICE = 0.9          # head-mask overlap (where both have data) of the pair compared below this: refused
SAMPLING_SEED = 14            # Mattes MI's random sample: fixed, so a case registers the same every time
SAMPLING_FRACTION = 0.25
HISTOGRAM_BINS = 32


def register_inputs(inputs: list, reference, task, mode: str, warnings: list[str]):
    """Check (and with ``mode`` != never, possibly register) the task's other-session inputs.

    Returns the ``report.json["registration"]`` entry (None for tasks without such inputs), the
    names of the inputs now on the reference grid, and where on that grid they have no data (a
    boolean array, numpy order, or None: the outputs are masked there). Inputs registered or on
    another grid get their image replaced by the one resampled onto the reference grid (always
    :func:`resample_onto`: one rule); their ``geometry`` stays the file's. Refused (``UserError``)
    unless ``mode`` is ``never``: a pair that does not line up (:func:`gate_notes`) in the state the
    model would compare. The entry:

    * ``mode`` (auto / rigid / affine / never), ``moving`` (input name), ``fixed`` (reference name);
    * ``performed`` (bool), ``reason`` (why it was or was not registered);
    * ``estimate``: the transform found (even when not applied), ``displacement_mm`` of the head
      under it (``mean``, ``max``);
    * ``transform`` (when performed): ``type`` (ITK class), ``parameters``, ``fixed_parameters``,
      ``matrix_lps`` (4×4, maps follow-up points to baseline points in LPS mm: ITK's resampling
      convention), ``baseline_to_followup_ras`` (4×4, the inverse in RAS: what a Slicer transform
      node applied to the baseline volume needs), ``rotation_deg`` (rigid part's angle);
    * ``metric_before`` / ``metric_after``: ``nmi``, ``correlation``, ``head_dice`` (inside the
      baseline's field of view), ``head_coverage`` (fraction of the follow-up's head inside it) on the
      working grid;
    * ``gate``: the checks of the pair as compared (``passed``, ``notes``);
    * ``space`` (when resampled): where the model compared the two time points — ``"<fixed> grid"``:
      the baseline resampled onto the follow-up's grid, the follow-up untouched, so the outputs are
      on the follow-up's geometry with no second resampling;
    * ``background`` (when resampled): the rule that keeps the resampled baseline's background at
      exactly zero (:func:`shared_background` says why) and ``background_voxels_zeroed``;
    * ``coverage`` (when resampled): ``head_fraction`` and ``masked_voxels``: follow-up voxels with
      a non-zero value outside the baseline's field of view, where no lesion can be called new and
      the outputs are masked (background);
    * ``quality`` (good / poor; ``not registered`` when not performed) and ``quality_notes``;
    * ``seconds`` spent.
    """
    if mode not in REGISTER_MODES:
        raise UserError(f"unknown register mode {mode!r}; choose one of: {', '.join(REGISTER_MODES)}")
    names = [n for n in getattr(task, "register_inputs", ()) if n != reference.name]
    moving_inputs = [i for i in inputs if i.name in names]
    if not moving_inputs:
        if mode in ("rigid", "affine"):
            raise UserError(f"--register {mode}: task {task.name!r} has no inputs from another session to register "
                            "(only ms-new registers its baseline onto the follow-up); leave --register at auto")
        return None, set(), None
    if len(moving_inputs) > 1:   # one entry per run; tasks register one earlier time point
        raise UserError(f"task {task.name!r} lists {len(moving_inputs)} inputs to register; one is supported")
    item = moving_inputs[0]
    entry, image, uncovered = register_pair(reference.image, item.image, mode, item.name, reference.name, warnings)
    if image is None:
        return entry, set(), None
    item.image = image
    how = (f"registered onto {reference.name} ({entry['transform']['kind']}) and resampled onto its grid"
           if entry["performed"] else f"resampled onto {reference.name}'s grid without a transform")
    item.notes.append(f"{how} (quintic B-spline interpolation; background kept at zero: {entry['background']})")
    return entry, {item.name}, uncovered


def register_pair(fixed, moving, mode: str, moving_name: str = "flair_baseline", fixed_name: str = "flair_followup",
                  warnings: list[str] | None = None):
    """Register ``moving`` onto ``fixed`` (SimpleITK images) as ``mode`` says.

    Returns ``(entry, image, uncovered)``: the report entry (see :func:`register_inputs`), the
    moving image resampled onto the fixed grid (None when it was neither registered nor on another
    grid), and the fixed-grid voxels outside its field of view (None when none)."""
    import time

    import SimpleITK as sitk

    warnings = warnings if warnings is not None else []
    t0 = time.monotonic()
    fix_w, mov_w = working_copy(fixed), working_copy(moving)
    fix_mask, mov_mask = head_mask(fix_w), head_mask(mov_w)
    before = similarity(fix_w, mov_w, fix_mask, mov_mask, sitk.Transform())
    entry: dict[str, Any] = {"mode": mode, "moving": moving_name, "fixed": fixed_name, "performed": False,
                             "working_spacing_mm": WORKING_SPACING_MM, "metric_before": before}
    rigid = estimate_rigid(fix_w, mov_w, fix_mask)
    estimate = rigid
    if mode == "affine":
        estimate = estimate_affine(fix_w, mov_w, fix_mask, rigid)
    shift = displacement(estimate, fix_w, fix_mask)
    after = similarity(fix_w, mov_w, fix_mask, mov_mask, estimate)
    entry["estimate"] = {"kind": "affine" if mode == "affine" else "rigid",
                         "displacement_mm": shift, "rotation_deg": _rotation_deg(rigid)}
    improved = after["nmi"] > before["nmi"] + 1e-4
    misaligned = shift["mean"] > AUTO_THRESHOLD_MM and improved
    what = (f"{moving_name} appears moved by {shift['mean']:.1f} mm on average (up to {shift['max']:.1f} mm) "
            f"against {fixed_name}")
    if mode == "never":
        entry["reason"] = "--register never"
    elif mode == "auto" and not misaligned:
        entry["reason"] = (f"already aligned: the best rigid fit moves the head by {shift['mean']:.2f} mm on average "
                           f"(threshold {AUTO_THRESHOLD_MM:g} mm)" if shift["mean"] <= AUTO_THRESHOLD_MM
                           else "already aligned: no transform found improves the similarity")
    else:
        entry["reason"] = what if mode == "auto" else f"--register {mode}"
        entry["performed"] = True
    compared = after if entry["performed"] else before
    if compared["head_coverage"] == 0.0:   # nothing to compare: every voxel would be masked
        way = f"give --register rigid to register {moving_name} onto {fixed_name}, or " if mode == "never" else ""
        raise UserError(f"inputs {moving_name} and {fixed_name} do not overlap in physical space; {way}check that "
                        "both scans are of the same patient")
    gate = gate_notes(compared)
    entry["gate"] = {"passed": not gate, "notes": gate}
    if gate and mode != "never":
        done = (f"after {entry['estimate']['kind']} registration" if entry["performed"]
                else "and registration found no better fit")
        raise UserError(f"{moving_name} and {fixed_name} do not line up {done} ({'; '.join(gate)}): they may be "
                        "different patients or contrasts, or one is flipped or rotated far beyond a head's motion; "
                        "check both scans and co-register them beforehand (or give --register never to compare "
                        "them as they are)")
    if mode == "never" and (misaligned or gate):
        warnings.append(f"{what} (correlation {before['correlation']:.2f}{'; ' + '; '.join(gate) if gate else ''}): "
                        "the scans look misaligned and --register never was given; new-lesion detection compares the "
                        "scans voxel by voxel, so misaligned anatomy reads as new lesions: run again with "
                        "--register auto")
    transform = estimate if entry["performed"] else sitk.Transform()
    if entry["performed"]:
        entry["metric_after"] = after
        entry["transform"] = describe_transform(estimate, rigid, entry["estimate"]["kind"])
        notes = quality_notes(before, after)
        entry["quality"] = "poor" if notes else "good"
        entry["quality_notes"] = notes
        if notes:
            warnings.append(f"registration of {moving_name} onto {fixed_name} looks poor ({'; '.join(notes)}): check "
                            "the two scans side by side before trusting new lesions; if they are from different "
                            "patients or contrasts, fix the inputs")
    else:
        entry["quality"] = "not registered"
    if not entry["performed"] and Geometry.from_image(moving).same_grid(Geometry.from_image(fixed)):
        entry["seconds"] = round(time.monotonic() - t0, 2)
        return entry, None, None
    image, zeroed = resample_onto(moving, fixed, transform)
    entry["space"] = f"{fixed_name} grid"
    entry["background"] = (f"zero where {fixed_name} is zero or {moving_name} had no non-zero voxel "
                           "(the models z-score the non-zero voxels)")
    entry["background_voxels_zeroed"] = zeroed
    uncovered = outside_view(moving, fixed, transform)
    masked = int((uncovered & (sitk.GetArrayViewFromImage(fixed) != 0)).sum())
    entry["coverage"] = {"head_fraction": compared["head_coverage"], "masked_voxels": masked}
    if masked:
        warnings.append(f"{moving_name} covers only {compared['head_coverage']:.0%} of {fixed_name}'s head: where it "
                        f"has no data ({masked} voxels of {fixed_name}) nothing can be called new, so the outputs are "
                        "masked there (background); give a baseline that covers the whole head to look there")
    entry["seconds"] = round(time.monotonic() - t0, 2)
    return entry, image, uncovered if masked else None


def outside_view(moving, fixed, transform) -> np.ndarray:
    """Fixed-grid voxels (numpy order) that ``transform`` maps outside the moving image's field of
    view (the hull of its voxel centres): the baseline has no data there, only the resampler's zeros."""
    import SimpleITK as sitk

    ones = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(moving)
    inside = sitk.Resample(ones, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(inside) < 1.0 - 1e-3


def resample_onto(moving, fixed, transform):
    """The moving image through ``transform`` on the fixed grid, once, with a quintic B-spline, its
    background kept at zero (:func:`shared_background`); returns it and the number of voxels zeroed.

    Why not linear: linear interpolation averages neighbouring voxels, so the resampled baseline
    is smoother (less noisy) than the follow-up, and a model that compares them reads the
    follow-up's noise as new lesions. On a held-out phantom pair at the model's 2 mm, merely
    re-registering the co-registered pair turned the demo model's 2 correct lesions into 11
    (lesion F1 1.0 → 0.31) with linear; a windowed sinc kept 1.0. White noise rotated by 10° keeps
    54 % of its standard deviation with linear, 82 % with a cubic B-spline, 88 % with the quintic
    one and 90 % with the Lanczos sinc, which takes 15 times as long as the quintic. Its overshoot
    is clipped to the image's range."""
    import SimpleITK as sitk

    out = sitk.Resample(moving, fixed, transform, sitk.sitkBSpline5, 0.0, sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(moving)
    out = sitk.Clamp(out, sitk.sitkFloat32, float(values.min()), float(values.max()))
    return shared_background(out, moving, fixed, transform)


def shared_background(resampled, moving, fixed, transform):
    """``resampled`` (the moving image on the fixed grid) with zero wherever the moving image had no
    data of its own (its non-zero voxels, carried by ``transform``) or the fixed image is zero; and
    how many non-zero voxels that zeroed.

    Why: the models z-score each input over its non-zero voxels (a skull-stripped background is
    exactly 0). A B-spline's prefilter spreads every voxel along whole image rows, so the resampled
    background is no longer exactly 0 but 1e-37 … 1e-9 (and near the brain's edge, overshoot), and
    the z-score counts it: on the bundled sample, resampling the baseline by the *identity* made
    1.0 M background voxels non-zero and moved the baseline's mean from 276 to 160 and its standard
    deviation from 72 to 147, which halves its contrast against the follow-up's; the demo model's
    new-lesion F1 over the sample and three held-out pairs fell from 0.60 to 0.20 by that alone,
    and came back to 0.60 with the background zeroed. The fixed image's zeros too: pairs prepared
    together share one brain mask, as the training pairs do, so the registered baseline takes the
    follow-up's background (a pair without a zero background is left as it is)."""
    import SimpleITK as sitk

    own = sitk.Resample(sitk.Cast(sitk.NotEqual(moving, 0), sitk.sitkFloat32), fixed, transform, sitk.sitkLinear,
                        0.0, sitk.sitkFloat32)
    keep = sitk.And(sitk.GreaterEqual(own, 0.5), sitk.NotEqual(fixed, 0))
    drop = (sitk.GetArrayViewFromImage(keep) == 0) & (sitk.GetArrayViewFromImage(resampled) != 0)
    return sitk.Mask(resampled, keep, 0.0), int(drop.sum())


def gate_notes(compared: dict) -> list[str]:
    """Why a pair, as the model would compare it, does not line up (empty: it does): its intensities
    inside the follow-up's head must correlate and the two heads overlap where both scans have data.
    A baseline rotated by 90° (correlation about 0) or another patient's scan fails."""
    notes = []
    if compared["correlation"] < POOR_CORRELATION:
        notes.append(f"intensity correlation {compared['correlation']:.2f} < {POOR_CORRELATION:g}")
    if compared["head_dice"] < POOR_HEAD_DICE:
        notes.append(f"head overlap (Dice) {compared['head_dice']:.2f} < {POOR_HEAD_DICE:g}")
    return notes


def quality_notes(before: dict, after: dict) -> list[str]:
    """Reasons to call a registration that passed the gate poor (empty: good)."""
    notes = []
    if after["nmi"] < before["nmi"] - 1e-3:
        notes.append(f"similarity got worse (NMI {before['nmi']:.3f} → {after['nmi']:.3f})")
    return notes


# ------------------------------------------------------------------------------------------------
# Working copies and masks
# ------------------------------------------------------------------------------------------------
def working_copy(image, spacing: float = WORKING_SPACING_MM):
    """``image`` smoothed and resampled to isotropic ``spacing`` (never finer than its own), same
    orientation and extent: registration on it is fast, and the transform holds for the original."""
    import SimpleITK as sitk

    old = np.array(image.GetSpacing(), float)
    new = np.maximum(old, spacing)
    if np.allclose(old, new):
        return sitk.Cast(image, sitk.sitkFloat32)
    sigma = [float(math.sqrt(max(n ** 2 - o ** 2, 0.0)) / 2.355) for n, o in zip(new, old)]   # FWHM of the new voxel
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma)
    size = [max(2, int(math.ceil(s * o / n))) for s, o, n in zip(image.GetSize(), old, new)]
    d = np.array(image.GetDirection(), float).reshape(3, 3)
    origin = np.array(image.GetOrigin(), float) + d @ ((new - old) / 2.0)   # same outer edge
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), tuple(new.tolist()),
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def head_mask(image):
    """The head (or brain, if skull-stripped): Otsu foreground, holes filled, largest component."""
    import SimpleITK as sitk

    fg = sitk.OtsuThreshold(image, 0, 1, 128)
    fg = sitk.BinaryMorphologicalClosing(fg, [1, 1, 1])
    fg = sitk.BinaryFillhole(fg)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(fg), sortByObjectSize=True)
    mask = sitk.Cast(cc == 1, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(mask).any():   # a flat image: everything counts
        mask = sitk.Cast(image == image, sitk.sitkUInt8)
    return mask


# ------------------------------------------------------------------------------------------------
# Estimation
# ------------------------------------------------------------------------------------------------
def _method(fixed_mask, levels: tuple[int, ...]):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(HISTOGRAM_BINS)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(SAMPLING_FRACTION, SAMPLING_SEED)
    reg.SetMetricFixedMask(sitk.BinaryDilate(fixed_mask, [2, 2, 2]))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(levels))
    reg.SetSmoothingSigmasPerLevel([float(s) - 1.0 for s in levels])   # voxels of the working grid
    reg.SetNumberOfThreads(1)   # the joint histogram's sum order (and so the result) does not vary with cores
    return reg


def estimate_rigid(fixed, moving, fixed_mask):
    """Euler3D fixed→moving transform, from the better start of identity and intensity moments."""
    import SimpleITK as sitk

    centre = _mask_centre(fixed, fixed_mask)
    identity = sitk.Euler3DTransform()
    identity.SetCenter(centre)
    moments = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS))
    starts = []
    for start in (identity, moments):
        probe = _method(fixed_mask, (1,))
        probe.SetInitialTransform(start, inPlace=False)
        try:
            value = probe.MetricEvaluate(fixed, moving)
        except RuntimeError:   # no overlap at this start
            value = math.inf
        starts.append((value, start))
    start = min(starts, key=lambda s: s[0])[1]
    reg = _method(fixed_mask, (2, 1))
    reg.SetInitialTransform(sitk.Euler3DTransform(start), inPlace=True)
    try:
        result = reg.Execute(fixed, moving)
    except RuntimeError as exc:
        raise UserError(f"registration failed ({str(exc).strip().splitlines()[-1][:160]}); check that both FLAIRs show "
                        "the same head, or co-register them beforehand and use --register never") from None
    return sitk.Euler3DTransform(_only(result))


def estimate_affine(fixed, moving, fixed_mask, rigid):
    """Affine refinement started from the rigid result (scanner scaling drift between sessions)."""
    import SimpleITK as sitk

    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    reg = _method(fixed_mask, (1,))
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=0.5, minStep=1e-4, numberOfIterations=100,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(affine, inPlace=True)
    try:
        result = reg.Execute(fixed, moving)
    except RuntimeError as exc:
        raise UserError(f"affine registration failed ({str(exc).strip().splitlines()[-1][:160]}); use --register "
                        "rigid") from None
    return sitk.AffineTransform(_only(result))


def _only(transform):
    """The one transform inside what ImageRegistrationMethod returns (a composite when not in place)."""
    import SimpleITK as sitk

    if isinstance(transform, sitk.CompositeTransform) or transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        return composite.GetNthTransform(composite.GetNumberOfTransforms() - 1)
    return transform


def _mask_centre(image, mask) -> tuple[float, float, float]:
    import SimpleITK as sitk

    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    centre = idx.mean(axis=0)[::-1] if len(idx) else (np.array(image.GetSize()) - 1) / 2.0
    return image.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre])


# ------------------------------------------------------------------------------------------------
# Measures
# ------------------------------------------------------------------------------------------------
def _points(image, mask, step: int = 7) -> np.ndarray:
    """Physical (LPS) points of every ``step``-th head voxel."""
    import SimpleITK as sitk

    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[::step][:, ::-1].astype(float)
    d = np.array(image.GetDirection(), float).reshape(3, 3)
    return (idx * np.array(image.GetSpacing())) @ d.T + np.array(image.GetOrigin())


def displacement(transform, image, mask) -> dict[str, float]:
    """How far the transform moves the head's points (mm): the size of the misalignment."""
    pts = _points(image, mask)
    if len(pts) == 0:
        return {"mean": 0.0, "max": 0.0}
    moved = np.array([transform.TransformPoint(tuple(p)) for p in pts])
    d = np.linalg.norm(moved - pts, axis=1)
    return {"mean": round(float(d.mean()), 3), "max": round(float(d.max()), 3)}


def similarity(fixed, moving, fixed_mask, moving_mask, transform) -> dict[str, float]:
    """NMI, correlation, head-mask Dice and head coverage of ``moving`` seen through ``transform`` on
    ``fixed``'s grid (:func:`register_inputs` defines them)."""
    import SimpleITK as sitk

    moved = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    inside = sitk.GetArrayFromImage(sitk.Resample(moving_mask * 0 + 1, fixed, transform, sitk.sitkNearestNeighbor, 0))
    moved_mask = sitk.GetArrayFromImage(sitk.Resample(moving_mask, fixed, transform, sitk.sitkNearestNeighbor, 0)) > 0
    head = sitk.GetArrayViewFromImage(fixed_mask) > 0
    a = sitk.GetArrayViewFromImage(fixed)
    use = head & (inside > 0)
    # the overlap where both scans have data: a baseline of half the head can still line up
    dice = 2.0 * float((use & moved_mask).sum()) / max(float(use.sum() + moved_mask.sum()), 1.0)
    coverage = round(float(use.sum()) / max(float(head.sum()), 1.0), 4)
    if use.sum() < 10:
        return {"nmi": 1.0, "correlation": 0.0, "head_dice": round(dice, 4), "head_coverage": coverage}
    x, y = a[use].astype(np.float64), moved[use].astype(np.float64)
    corr = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 0.0
    return {"nmi": round(normalised_mutual_information(x, y), 4), "correlation": round(corr, 4),
            "head_dice": round(dice, 4), "head_coverage": coverage}


def normalised_mutual_information(x: np.ndarray, y: np.ndarray, bins: int = HISTOGRAM_BINS) -> float:
    """Studholme's (H(X) + H(Y)) / H(X, Y): 1 for independent intensities, 2 for identical ones."""
    joint, _, _ = np.histogram2d(x, y, bins=bins)
    p = joint / max(joint.sum(), 1.0)

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    hxy = entropy(p)
    return (entropy(p.sum(1)) + entropy(p.sum(0))) / hxy if hxy > 0 else 2.0


# ------------------------------------------------------------------------------------------------
# The transform as report.json records it
# ------------------------------------------------------------------------------------------------
def homogeneous(transform) -> np.ndarray:
    """4×4 matrix of a matrix-offset transform (fixed → moving points, LPS mm)."""
    m = np.eye(4)
    m[:3, :3] = np.array(transform.GetMatrix(), float).reshape(3, 3)
    centre = np.array(transform.GetCenter(), float)
    m[:3, 3] = np.array(transform.GetTranslation(), float) + centre - m[:3, :3] @ centre
    return m


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def describe_transform(transform, rigid, kind: str) -> dict[str, Any]:
    m = homogeneous(transform)
    to_followup_ras = LPS_TO_RAS @ np.linalg.inv(m) @ LPS_TO_RAS
    return {"kind": kind, "type": transform.GetName(),
            "parameters": [round(float(v), 6) for v in transform.GetParameters()],
            "fixed_parameters": [round(float(v), 6) for v in transform.GetFixedParameters()],
            "matrix_lps": np.round(m, 6).tolist(),
            "convention": "matrix_lps maps follow-up points to baseline points (LPS mm, ITK resampling convention); "
                          "baseline_to_followup_ras moves the baseline onto the follow-up (RAS mm, Slicer)",
            "baseline_to_followup_ras": np.round(to_followup_ras, 6).tolist(),
            "rotation_deg": _rotation_deg(rigid),
            "translation_mm": [round(float(v), 3) for v in m[:3, 3]]}


def _rotation_deg(transform) -> float:
    r = np.array(transform.GetMatrix(), float).reshape(3, 3)
    return round(math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0)))), 3)

