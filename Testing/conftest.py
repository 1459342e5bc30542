"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def module_lib_importable():
    """The Slicer module's own package (LesionFactorizerModuleLib) importable, as Slicer makes it,
    for one test module only: other modules must not see it by accident."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO / "LesionFactorizer"))
        yield
