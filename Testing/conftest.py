"""Fixtures shared by several test modules."""

from __future__ import annotations

import locale
import os
from pathlib import Path

import pytest

import testnet_hook

REPO = Path(__file__).resolve().parents[1]

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
