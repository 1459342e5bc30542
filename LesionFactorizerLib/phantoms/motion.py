"""A known rigid head motion between two scans, for testing registration.

A follow-up pair that was never co-registered differs by the patient's head position: a rotation
about some axis through the head and a shift. :func:`move_head` applies such a motion to an image
in one of two ways a scanner produces it — the field of view moved with the head (``header``: the
voxels are untouched, only origin and direction change, so no interpolation blurs the test) or
the head moved inside a fixed field of view (``resample``: the voxels are resampled, quintic
B-spline).
:func:`true_transform` is the motion as the fixed→moving transform that registration should find.
"""

from __future__ import annotations

import numpy as np


def _rotation(axis, degrees: float) -> np.ndarray:
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def image_centre(image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))


def true_transform(image, degrees: float, translation_mm, axis=(0.3, 0.2, 1.0)):
    """The motion p → R(p − c) + c + t (c: the image centre, LPS mm) as a SimpleITK transform."""
    import SimpleITK as sitk

    tr = sitk.Euler3DTransform()
    tr.SetCenter(tuple(image_centre(image)))
    tr.SetMatrix(tuple(_rotation(axis, degrees).ravel()))
    tr.SetTranslation(tuple(float(v) for v in translation_mm))
    return tr


def move_head(image, degrees: float, translation_mm, axis=(0.3, 0.2, 1.0), mode: str = "header"):
    """``image`` with its content moved by :func:`true_transform` (see the module docstring)."""
    import SimpleITK as sitk

    motion = true_transform(image, degrees, translation_mm, axis)
    if mode == "resample":
        # a scanner acquires the moved head afresh, with unsmoothed noise: a high-order spline, not
        # linear interpolation (which would halve the noise and make the pair differ in texture)
        out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), image, motion.GetInverse(), sitk.sitkBSpline5, 0.0)
        values = sitk.GetArrayViewFromImage(image)
        return sitk.Cast(sitk.Clamp(out, sitk.sitkFloat32, float(values.min()), float(values.max())),
                         image.GetPixelID())
    if mode != "header":
        raise ValueError(f"mode must be 'header' or 'resample', not {mode!r}")
    r = np.array(motion.GetMatrix()).reshape(3, 3)
    out = sitk.Image(image)
    out.SetDirection(tuple((r @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
    out.SetOrigin(tuple(motion.TransformPoint(image.GetOrigin())))
    return out


def transform_error_mm(estimated, truth, image, mask=None) -> dict[str, float]:
    """Mean and max distance (mm) between where the two transforms send the head's voxels."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(mask if mask is not None else image)
    idx = np.argwhere(arr > 0)[::97][:, ::-1].astype(float)
    d = np.array(image.GetDirection()).reshape(3, 3)
    pts = (idx * np.array(image.GetSpacing())) @ d.T + np.array(image.GetOrigin())
    err = np.array([np.linalg.norm(np.subtract(estimated.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p))))
                    for p in pts])
    return {"mean": round(float(err.mean()), 3), "max": round(float(err.max()), 3)}
