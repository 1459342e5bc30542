"""Fixtures shared by several test modules."""

from __future__ import annotations

import locale
import os

import numpy as np
import pytest
import SimpleITK as sitk

import testnet_hook
from helpers import REPO, save_threshold_model

# The test network (testnets.py) is buildable in this process and in every process the tests start.
testnet_hook.install()
os.environ["PYTHONPATH"] = os.pathsep.join(
    dict.fromkeys([str(testnet_hook.SITE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))


@pytest.fixture(scope="module")
def module_lib_importable():
    """The Slicer module's own package (LesionFactorizerModuleLib) importable, as Slicer makes it,
    for one test module only: other modules must not see it by accident."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO / "LesionFactorizer"))
        yield


LOCALE_AT_START = locale.setlocale(locale.LC_ALL)


@pytest.fixture(autouse=True)
def _process_locale_restored():
    """Each test ends with the process locale the session started with. GDCM's DICOM writer
    (SimpleITK 2.5, writing Image Position Patient) leaves LC_CTYPE at "C"; the tests that write
    DICOM series would otherwise make every later test run in ASCII, where the library rightly
    declines ``torch.compile`` and that backend's tests only skip. (The library never writes DICOM
    through GDCM; its reads leave the locale alone.) Compared with the session's start, not the
    test's: a module-scoped fixture runs before this one."""
    yield
    if locale.setlocale(locale.LC_ALL) != LOCALE_AT_START:
        locale.setlocale(locale.LC_ALL, LOCALE_AT_START)


@pytest.fixture(scope="module")
def three_lesion_run(tmp_path_factory):
    """A real run for the navigator and scene tests: bright blob, dim blob, and a third small blob,
    with a 2-member ensemble + TTA."""
    from LesionFactorizerLib.core.settings import SegmentSettings
    from LesionFactorizerLib.pipeline.segment import segment_case

    tmp = tmp_path_factory.mktemp("nav")
    rng = np.random.default_rng(0)
    array = (100 + 5 * rng.standard_normal((20, 24, 28))).astype(np.float32)
    array[4:9, 5:10, 18:24] = 400
    array[12:16, 14:18, 3:7] = 250
    array[15:18, 3:6, 12:15] = 330
    z = (array - array.mean(dtype=np.float64)) / array.std(dtype=np.float64)
    z_dim = float(z[13, 15, 4])
    paths = {}
    for name in ("dwi", "adc"):
        paths[name] = str(tmp / f"{name}.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(array), paths[name])
    models = [save_threshold_model(tmp / f"m{i}.safetensors", threshold=t * z_dim, patch=(16, 16, 16))
              for i, t in enumerate((0.5, 1.2))]
    return segment_case(paths, str(tmp / "out"), SegmentSettings(models=models, device="cpu", tta=True,
                                                                 overview=False)).outputs
