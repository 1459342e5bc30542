"""Finding the LesionFactorizerLib package next to the module.

Two layouts exist: the source tree (developer mode, "Add module path" = <repo>/LesionFactorizer,
library at <repo>/LesionFactorizerLib) and the installed extension (library copied next to the
module file into the scripted-modules folder). The worker gets the same folder on PYTHONPATH, so
GUI and worker always run the same library code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def find_library_root(module_dir: str | os.PathLike) -> Path | None:
    """The folder that contains ``LesionFactorizerLib/``, searched from the module folder upwards."""
    start = Path(module_dir).resolve()
    # list(): slicing Path.parents needs Python 3.10, and Slicer 5.8 runs 3.9.
    for candidate in [start, *list(start.parents)[:2]]:
        if (candidate / "LesionFactorizerLib" / "__init__.py").is_file():
            return candidate
    return None


def ensure_importable(module_dir: str | os.PathLike) -> Path:
    """Put the library (and this helper package) on sys.path; raise if the library is missing."""
    module_dir = Path(module_dir).resolve()
    if str(module_dir) not in sys.path:
        sys.path.insert(0, str(module_dir))
    root = find_library_root(module_dir)
    if root is None:
        raise RuntimeError(f"LesionFactorizerLib was not found next to {module_dir}; reinstall the "
                           f"LesionFactorizer extension.")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    return root


def bundled_resources(library_root: str | os.PathLike) -> Path:
    """The extension's shared Resources folder (bundled models and sample cases)."""
    return Path(library_root) / "Resources"
