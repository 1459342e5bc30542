"""Prints, as JSON, every public name the Slicer stand-in provides: [module, class or "", member or ""].

Run in a fresh interpreter (the stand-in's slicer/qt/vtk must not enter a test process).
"""

import inspect
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "pythonpath"))

import ctk  # noqa: E402
import DICOMLib.DICOMUtils  # noqa: E402
import qt  # noqa: E402
import SampleData  # noqa: E402
import slicer  # noqa: E402
import slicer.i18n  # noqa: E402
import slicer.ScriptedLoadableModule  # noqa: E402
import slicer.util  # noqa: E402
import vtk  # noqa: E402

MODULES = (slicer, slicer.util, slicer.i18n, slicer.ScriptedLoadableModule, SampleData, DICOMLib.DICOMUtils, qt, ctk,
           vtk)


def public(names):
    return sorted(n for n in names if not n.startswith("_"))


def members(cls):
    names = set(vars(cls))
    try:
        names |= set(vars(cls()))
    except TypeError:
        pass  # needs constructor arguments: its class attributes are listed
    return public(names)


rows = []
for module in MODULES:
    for name in public(vars(module)):
        value = getattr(module, name)
        if inspect.ismodule(value) and not value.__name__.startswith(module.__name__ + "."):
            continue  # an import (json, numpy, qt, ...), not a name this module provides
        if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ != module.__name__:
            continue  # imported from another stand-in module; listed there
        rows.append([module.__name__, name, ""])
        if inspect.isclass(value):
            rows += [[module.__name__, name, member] for member in members(value)]
for name in ("app", "modules"):  # application objects: their attributes are API too
    obj = getattr(slicer, name)
    rows += [["slicer", name, attr] for attr in public(set(dir(obj)) - set(dir(object)))]
print(json.dumps(rows))
