"""Plays Slicer's part around a scripted module: start-up, module loading, widgets, event loop.

Used by play_clinician_path.py in a fresh interpreter (Python 3.9 or 3.12, like Slicer 5.8 and
5.10+). Only this file reaches into the stand-in's internals (underscore names).
"""

import importlib.util
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start(modules_dir, version, worker_python, worker_site):
    """Environment as Slicer sets it up, before the application object exists."""
    os.environ["SLICER_STANDIN_VERSION"] = version
    os.environ["SLICER_STANDIN_WORKER_PYTHON"] = worker_python
    os.environ["SLICER_STANDIN_WORKER_SITE"] = worker_site
    os.environ["PATH"] = str(HERE / "bin") + os.pathsep + os.environ.get("PATH", "")
    # Slicer's Python has the scripted-modules folder on sys.path; in real Slicer the GUI and the
    # worker share one site-packages: package metadata of the worker's packages is visible to the
    # module's dependency check (nothing from there is imported by the GUI).
    sys.path[:0] = [str(HERE / "pythonpath"), str(modules_dir)]
    sys.path.append(worker_site)
    import slicer  # noqa: F401


def load_module(modules_dir, name):
    import qt

    spec = importlib.util.spec_from_file_location(name, str(Path(modules_dir) / f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    module_object = getattr(module, name)(qt.QWidget())
    return module, module_object


def startup_completed():
    import slicer

    for slot in slicer.app._connections.get("startupCompleted()", []):
        slot()


def create_widget(module, name):
    import qt
    import slicer

    widget = getattr(module, f"{name}Widget")(qt.QWidget())
    widget.setup()
    setattr(slicer.modules, f"{name.lower()}widget", widget)
    return widget


def module_widget(name):
    import slicer

    return getattr(slicer.modules, f"{name.lower()}widget")


def run_events_until(predicate, timeout_s, what):
    import slicer

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        slicer.app.processEvents()


def dialogs():
    import slicer

    return slicer.app._dialogs


def answer_next_confirmations(*answers):
    import slicer

    slicer.app._dialogAnswers[:] = list(answers)


def answer_next_file_dialogs(*paths):
    import qt

    qt.QFileDialog._answers[:] = [str(p) for p in paths]


def slice_layers():
    import slicer

    return slicer.app._sliceLayers


def slice_jumps():
    """(RAS point, centered) of every JumpSlicesToLocation so far."""
    import slicer

    return slicer.app._sliceJumps


def temporary_path():
    import slicer

    return Path(slicer.app.temporaryPath)


def loaded_terminology(name):
    import slicer

    return slicer.modules.terminologies.logic()._contexts.get(name)


def segment_mask(segmentation_node, segment_id):
    return segmentation_node.GetSegmentation().GetSegment(segment_id)._labelmap


def volume_geometry(node):
    return node._ijkToRAS
