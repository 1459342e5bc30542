"""LesionFactorizer: brain-lesion segmentation with interpretable Factorizer networks.

Importing the package is cheap and torch-free (the Slicer module imports the task definitions
and model-file metadata readers from here); torch-backed names load on first use.
"""

import os

__version__ = "0.1.0"

# Let torch's CPU allocator back large tensors with transparent huge pages. Full-resolution feature
# maps are hundreds of MB; with 4 KB pages the kernel's page faults on every fresh allocation cost
# more than the arithmetic (measured: 47 ms vs 11 ms to first-fill 256 MB). Only effective when
# set before torch is imported; users can override it with THP_MEM_ALLOC_ENABLE=0.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_LAZY = {
    "build_model": "LesionFactorizerLib.presets",
    "PRESETS": "LesionFactorizerLib.presets",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'LesionFactorizerLib' has no attribute {name!r}")


__all__ = ["build_model", "PRESETS", "__version__"]
