"""LesionFactorizer: brain-lesion segmentation with interpretable Factorizer networks.

Importing the package is cheap and torch-free (the Slicer module imports the task definitions
and model-file metadata readers from here); torch-backed names load on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "build_model": "LesionFactorizerLib.presets",
    "PRESETS": "LesionFactorizerLib.core.network_presets",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'LesionFactorizerLib' has no attribute {name!r}")


__all__ = ["build_model", "PRESETS", "__version__"]
