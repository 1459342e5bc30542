"""The stand-in fires only events real Slicer fires, and the module waits only for those.

The list, each event with the Slicer v5.10.0 source line that fires it, is
``slicer_standin/pythonpath/_standin_events.py``; the stand-in's ``InvokeEvent`` refuses anything else.
"""

from __future__ import annotations

import re
import sys

import pytest
from helpers import MODULE_DIR, STANDIN, run_in_slicer

PYTHONPATH = STANDIN / "pythonpath"
MODULE_FILES = sorted(MODULE_DIR.rglob("*.py"))

sys.path.insert(0, str(PYTHONPATH))
from _standin_events import FIRED  # noqa: E402

sys.path.remove(str(PYTHONPATH))


def test_every_event_the_stand_in_invokes_is_listed_with_its_slicer_source():
    invoked = set()
    for path in PYTHONPATH.rglob("*.py"):
        for argument in re.findall(r"InvokeEvent\(\s*([\w.]+)", path.read_text(encoding="utf-8")):
            invoked.add(argument.split(".")[-1])
    assert "ALLOWED_IDS" in (PYTHONPATH / "vtk.py").read_text(encoding="utf-8")  # InvokeEvent checks the list
    named = invoked - {"self", "_MODIFIED_EVENT"}  # the definition; Modified's vtkCommand::ModifiedEvent
    assert named and named <= set(FIRED), sorted(named - set(FIRED))
    assert "StartSaveEvent" not in FIRED   # declared by Slicer, fired by nothing in it
    for name, (_, source) in FIRED.items():
        assert re.match(r"Libs/MRML/Core/\w+\.(cxx|h):\d+", source), (name, source)


def test_the_module_observes_only_events_slicer_fires():
    observed = set()
    for path in MODULE_FILES:
        observed |= set(re.findall(r"mrmlScene\.(\w+Event)\b", path.read_text(encoding="utf-8")))
        observed |= set(re.findall(r"scene\.(\w+Event)\b", path.read_text(encoding="utf-8")))
    assert observed and observed <= set(FIRED), sorted(observed - set(FIRED))


@pytest.mark.slow
def test_an_event_slicer_never_fires_is_refused_and_a_session_fires_only_listed_ones(tmp_path):
    out = run_in_slicer(tmp_path, """
        import numpy as np, vtk
        node = slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), name="scan dwi")
        slicer.util.saveScene(str(harness.temporary_path() / "saved"))
        slicer.mrmlScene.Clear()
        slicer.util.loadScene(str(harness.temporary_path() / "saved" / "saved.mrml"))
        out["fired"] = sorted(set(vtk._fired))
        try:
            slicer.mrmlScene.InvokeEvent(slicer.mrmlScene.StartSaveEvent)
            out["refused"] = False
        except AssertionError as exc:
            out["refused"] = "real Slicer does not fire" in str(exc)
    """)
    ids = {event_id for event_id, _ in FIRED.values()}
    assert set(out["fired"]) <= ids
    names = {name for name, (event_id, _) in FIRED.items() if event_id in out["fired"]}
    assert {"NodeAddedEvent", "NodeRemovedEvent", "StartCloseEvent", "EndCloseEvent", "StartImportEvent",
            "EndImportEvent"} <= names
    assert out["refused"]
