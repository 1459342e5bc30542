"""Where the Slicer API indexes and their checker are, for the tests that hold the module and the
stand-in against the real Slicer API (``test_slicer_module_structure.py``, ``test_slicer_standin_api.py``).

An index lists every public name of Slicer's sources at one release (classes, members, Python
functions, with usage evidence for Qt/VTK names); the checker reads a module's Python and .ui files
against it. Neither is part of this repository (they are generated from Slicer's sources, megabytes
each): point ``LESIONFACTORIZER_SLICER_API_INDEX`` at the folder that holds ``slicer-api-index.json``
and ``slicer-api-index-<version>.json``, and ``LESIONFACTORIZER_SLICER_API_CHECKER`` at the checker
script. Without them those tests skip, saying which variable is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

INDEX_VAR = "LESIONFACTORIZER_SLICER_API_INDEX"
CHECKER_VAR = "LESIONFACTORIZER_SLICER_API_CHECKER"


def _given(var: str, name: str = "") -> Path | None:
    value = os.environ.get(var)
    path = Path(value) / name if value else None
    return path if path is not None and path.is_file() else None


def index(version: str | None = None) -> Path | None:
    """The index of Slicer ``version`` (None: the combined index), or None when not given."""
    return _given(INDEX_VAR, f"slicer-api-index-{version}.json" if version else "slicer-api-index.json")


def checker() -> Path | None:
    return _given(CHECKER_VAR)


def need(path: Path | None, var: str) -> Path:
    if path is None:
        pytest.skip(f"the Slicer API index or checker is not given ({var}; see Testing/slicer_standin/api_index.py)")
    return path
