"""Where the Lib keeps what it builds for this machine: compiled kernels, exported models, backend
measurements (torch-free)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """The user cache folder for compiled code, exported models and backend measurements:
    ``$LESION_FACTORIZER_CACHE``, else the platform's user cache (``%LOCALAPPDATA%`` on Windows,
    ``~/Library/Caches`` on macOS, ``$XDG_CACHE_HOME`` or ``~/.cache`` elsewhere) + ``lesion-factorizer``."""
    if os.environ.get("LESION_FACTORIZER_CACHE"):
        return Path(os.environ["LESION_FACTORIZER_CACHE"])
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lesion-factorizer"
