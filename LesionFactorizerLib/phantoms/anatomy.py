"""Normal brain anatomy for the phantoms, from the MNI ICBM152 2009a template shipped in nilearn.

nilearn bundles the skull-stripped T1 template and the grey/white-matter probability maps as
files inside the package, so reading them needs no download; we locate them with importlib and
read them with SimpleITK (no ``nilearn.datasets`` import, which is slow and would never fetch
these files anyway). The template has no CSF map: CSF is the brain mask minus GM and WM.

Everything here lives on the template's own 1 mm grid, cropped to the brain ("box" space, numpy
axis order z, y, x, so millimetres equal voxel indices). Lesion models and the warp to each case's
output grid work in this space.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from LesionFactorizerLib.core.errors import UserError

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_MARGIN_MM = 4


@dataclass(frozen=True)
class Anatomy:
    """Tissue maps on the cropped 1 mm template grid (arrays indexed z, y, x)."""

    gm: np.ndarray  # grey-matter fraction in [0, 1]
    wm: np.ndarray  # white-matter fraction
    csf: np.ndarray  # CSF fraction (brain mask minus parenchyma)
    brain: np.ndarray  # float mask of the skull-stripped head content (parenchyma + CSF)
    depth: np.ndarray  # mm from the outside of the brain (0 outside)
    ventricle_dist: np.ndarray  # mm to the nearest deep CSF voxel (lateral/third ventricles)
    # Physical geometry of box index (0, 0, 0) in SimpleITK (LPS) terms, for the writers.
    origin_lps: tuple[float, float, float]
    direction: tuple[float, ...]
    # MNI (RAS, mm) coordinate of box index (0, 0, 0); MNI = mni0 + sign * index (x, y, z order).
    mni0: tuple[float, float, float]
    mni_sign: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape  # type: ignore[return-value]

    def mni(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MNI x, y, z (mm, RAS) of box coordinates given as an array (3, ...) in z, y, x order."""
        x = self.mni0[0] + self.mni_sign[0] * coords[2]
        y = self.mni0[1] + self.mni_sign[1] * coords[1]
        z = self.mni0[2] + self.mni_sign[2] * coords[0]
        return x, y, z


def template_dir() -> str:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise UserError(
            "the phantom generator needs the brain template shipped with nilearn; "
            "install it with `pip install nilearn`"
        )
    return os.path.join(os.path.dirname(spec.origin), "datasets", "data")


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """Read and prepare the template once per process (about a second)."""
    import SimpleITK as sitk

    folder = template_dir()
    images = {}
    for key, name in _FILES.items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise UserError(f"nilearn's MNI152 template file is missing ({path}); reinstall nilearn")
        images[key] = sitk.ReadImage(path)
    ref = images["t1"]
    arr = {k: sitk.GetArrayFromImage(v).astype(np.float32) / 255.0 for k, v in images.items()}

    # The template is skull-stripped: whatever is non-zero is brain (ventricles included).
    brain = ndi.binary_fill_holes(ndi.binary_opening(arr["t1"] > 0.04, iterations=1))
    labels, n = ndi.label(brain)
    if n > 1:
        sizes = ndi.sum(brain, labels, range(1, n + 1))
        brain = labels == (1 + int(np.argmax(sizes)))
    nz = np.argwhere(brain)
    lo = np.maximum(nz.min(0) - _MARGIN_MM, 0)
    hi = np.minimum(nz.max(0) + 1 + _MARGIN_MM, brain.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    brain_f = ndi.gaussian_filter(brain.astype(np.float32), 0.6)[box]
    gm = arr["gm"][box]
    wm = arr["wm"][box]
    scale = np.where(gm + wm > 1.0, 1.0 / np.maximum(gm + wm, 1e-6), 1.0)
    gm, wm = gm * scale * (brain_f > 0.01), wm * scale * (brain_f > 0.01)
    par = gm + wm
    csf = np.clip(brain_f - par, 0.0, 1.0)
    brain_f = np.clip(par + csf, 0.0, 1.0)

    inside = brain_f > 0.5
    depth = ndi.distance_transform_edt(inside).astype(np.float32)
    deep_csf = (csf > 0.5) & (depth > 12)
    # Keep the big deep CSF blobs only (ventricles), not deep sulci fragments.
    labels, n = ndi.label(deep_csf)
    if n > 0:
        sizes = ndi.sum(deep_csf, labels, range(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= 0.05 * sizes.max()
        deep_csf = keep[labels]
    ventricle_dist = ndi.distance_transform_edt(~deep_csf).astype(np.float32)

    origin_lps = ref.TransformContinuousIndexToPhysicalPoint([float(box[2].start), float(box[1].start), float(box[0].start)])
    direction = ref.GetDirection()
    # LPS -> RAS flips x and y; MNI sign per index axis follows the direction cosines.
    d = np.array(direction).reshape(3, 3)
    mni0 = (-origin_lps[0], -origin_lps[1], origin_lps[2])
    mni_sign = (-d[0, 0], -d[1, 1], d[2, 2])
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in (gm, wm, csf, brain_f, depth, ventricle_dist)]
    for a in arrays:  # shared by every case of the process (lru_cache): never modified
        a.setflags(write=False)
    return Anatomy(
        *arrays,
        origin_lps=tuple(float(v) for v in origin_lps),
        direction=tuple(float(v) for v in direction),
        mni0=tuple(float(v) for v in mni0),
        mni_sign=tuple(float(v) for v in mni_sign),
    )
