"""Registers the test network (``testnets.ThresholdNet``) with the library, in the test process and
in the processes the tests start (CLI runs, Slicer workers, server workers).

``install()`` adds ``threshold-net`` to ``LesionFactorizerLib.presets.ARCHITECTURES`` when that
module is first imported (at once if it already is), so a process that never builds a network —
the Slicer module, which must not import torch — is left alone. ``conftest.py`` calls it and puts
``subprocess_site/`` on the ``PYTHONPATH`` of the test session, whose ``sitecustomize.py`` calls it in
each child. Nothing outside the tests sets that path, so the library's own registry never holds a
network that sleeps.

Standard library only, Python 3.9 syntax: it runs at the start of every child process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

PRESETS = "LesionFactorizerLib.presets"
TESTNETS = Path(__file__).resolve().with_name("testnets.py")
SITE = Path(__file__).resolve().with_name("subprocess_site")


def register(presets) -> None:
    """Add the test network to ``presets.ARCHITECTURES`` (idempotent)."""
    module = sys.modules.get("testnets")
    if module is None:
        spec = importlib.util.spec_from_file_location("testnets", TESTNETS)
        module = importlib.util.module_from_spec(spec)
        sys.modules["testnets"] = module
        spec.loader.exec_module(module)
    presets.ARCHITECTURES.setdefault(module.NAME, module.ThresholdNet)


class _AfterPresetsImport(importlib.abc.MetaPathFinder):
    """Finds ``LesionFactorizerLib.presets`` as Python would, and registers once it has run."""

    def find_spec(self, name, path, target=None):
        if name != PRESETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            register(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if PRESETS in sys.modules:
        register(sys.modules[PRESETS])
    elif not any(isinstance(f, _AfterPresetsImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterPresetsImport())
