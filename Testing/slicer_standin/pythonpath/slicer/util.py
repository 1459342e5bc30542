"""Stand-in for the ``slicer.util`` functions the module uses, on real files (SimpleITK) and arrays."""

import contextlib
import importlib
import importlib.util
import os
import sys
import time
import types
import xml.etree.ElementTree as ET

import numpy as np
import qt
import slicer

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VTKObservationMixin:
    def __init__(self):
        self.Observations = []

    def addObserver(self, obj, event, method, group="none", priority=0.0):
        tag = obj.AddObserver(event, method, priority)
        self.Observations.append((obj, event, method, group, tag, priority))

    def removeObserver(self, obj, event, method):
        for entry in list(self.Observations):
            if entry[0] is obj and entry[1] == event and entry[2] == method:
                obj.RemoveObserver(entry[4])
                self.Observations.remove(entry)

    def removeObservers(self, method=None):
        for entry in list(self.Observations):
            if method is None or entry[2] == method:
                entry[0].RemoveObserver(entry[4])
                self.Observations.remove(entry)

    def hasObserver(self, obj, event, method):
        return any(e[0] is obj and e[1] == event and e[2] == method for e in self.Observations)


# ---- UI


def loadUI(path):
    """Builds the widgets of a Qt Designer file: classes, designer properties and connections."""
    root = ET.parse(path).getroot()
    byName = {}

    def build(element):
        cls = element.get("class")
        factory = getattr(qt, cls, None) or getattr(slicer, cls, None) or getattr(importlib.import_module("ctk"), cls)
        widget = factory()
        widget.objectName = element.get("name", "")
        for prop in element.findall("property"):
            value = _designerValue(prop)
            if value is not None:
                setattr(widget, prop.get("name"), value)
        byName[widget.objectName] = widget
        return widget

    top = None
    for element in root.iter("widget"):
        widget = build(element)
        top = top or widget
        if widget is not top:
            top._children.append(widget)
    for connection in root.iter("connection"):
        sender = byName[connection.findtext("sender")]
        receiver = byName[connection.findtext("receiver")]
        signal = connection.findtext("signal").split("(")[0]
        slot = connection.findtext("slot").split("(")[0]
        getattr(sender, signal).connect(getattr(receiver, slot))
    return top


def _designerValue(prop):
    child = next(iter(prop), None)
    if child is None:
        return None
    text = child.text or ""
    if child.tag == "bool":
        return text == "true"
    if child.tag == "number":
        return int(text)
    if child.tag == "double":
        return float(text)
    if child.tag in ("string", "cstring"):
        return text
    if child.tag == "stringlist":
        return [s.text for s in child.findall("string")]
    return None


def childWidgetVariables(widget):
    return types.SimpleNamespace(**{w.objectName: w for w in [widget, *widget.children()] if w.objectName})


# ---- dialogs


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
    slicer.app._dialogs.append(("confirm", text))
    return slicer.app._dialogAnswers.pop(0) if slicer.app._dialogAnswers else True


def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    slicer.app._dialogs.append(("error", text))


@contextlib.contextmanager
def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
    try:
        yield
    except Exception as exc:
        if show:
            errorDisplay(f"{message}\n\n{exc}" if message else str(exc))
        raise


# ---- environment


def startupEnvironment():
    return dict(slicer.app._startupEnvironment)


def tempDirectory(key="__SlicerTemp__", tempDir=None, includeDateTime=True):
    base = tempDir or slicer.app.temporaryPath
    stamp = time.strftime("%Y-%m-%d_%H+%M+%S") + f".{time.monotonic_ns() % 1000000:06d}" if includeDateTime else ""
    path = os.path.join(base, key, stamp)
    os.makedirs(path, exist_ok=True)
    return path


def pip_install(requirements):
    """Base/Python/slicer/util.py pip_install: ``PythonSlicer -m pip install ...``."""
    import shlex

    args = shlex.split(requirements) if isinstance(requirements, str) else list(requirements)
    _executePythonModule("pip", ["install", *args])


def _executePythonModule(module, args):
    """Base/Python/slicer/util.py _executePythonModule: ``PythonSlicer -m module args`` in a child
    process, CalledProcessError when it fails. The stand-in records each call (with the text of any
    ``-c`` constraints file) and plays a package index: ``slicer.app._packageIndex`` maps a project
    name to the version it "installs" into the shared site-packages (``SLICER_STANDIN_WORKER_SITE``)
    as real distribution metadata; a name missing from it fails the call, as pip does. An installed
    ``torch`` is a real package whose import leaves a mark, so a test sees whether the GUI imported it."""
    import re
    import subprocess

    from packaging.requirements import Requirement

    args = [str(a) for a in args]
    constraints = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-c"]
    slicer.app._installs.append({"module": module, "args": args,
                                 "constraints": [open(c, encoding="utf-8").read() for c in constraints]})
    if args[:1] != ["install"]:
        raise subprocess.CalledProcessError(2, ["PythonSlicer", "-m", module, *args])
    skip = {i + 1 for i, a in enumerate(args) if a in ("-c", "--upgrade-strategy")}
    requirements = [Requirement(a) for i, a in enumerate(args[1:], 1) if i not in skip and not a.startswith("-")]
    if any(r.name not in slicer.app._packageIndex for r in requirements):
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", module, *args])
    site = os.environ["SLICER_STANDIN_WORKER_SITE"]
    for requirement in requirements:
        version = slicer.app._packageIndex[requirement.name]
        name = re.sub(r"[-_.]+", "_", requirement.name)
        info = os.path.join(site, f"{name}-{version}.dist-info")
        os.makedirs(info, exist_ok=True)
        with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as f:
            f.write(f"Metadata-Version: 2.1\nName: {requirement.name}\nVersion: {version}\n")
        if requirement.name == "torch":
            os.makedirs(os.path.join(site, "torch"), exist_ok=True)
            with open(os.path.join(site, "torch", "__init__.py"), "w", encoding="utf-8") as f:
                f.write("open(__file__ + '.imported', 'w').close()\n")


def getModuleLogic(moduleName):
    widget = getattr(slicer.modules, moduleName.lower() + "widget", None)
    return getattr(widget, "logic", None)


# ---- nodes and arrays


def getNode(pattern="*", index=0, scene=None):
    node = (scene or slicer.mrmlScene).GetFirstNodeByName(pattern)
    if node is None:
        raise MRMLNodeNotFoundException(f"could not find nodes in the scene by name or id '{pattern}'")
    return node


class MRMLNodeNotFoundException(Exception):
    pass


def getNodesByClass(className, scene=None):
    return (scene or slicer.mrmlScene).GetNodesByClass(className)


def _arrayAndGeometry(image):
    """(voxels (k, j, i), IJK-to-RAS) of a SimpleITK image."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("the stand-in loads 3-D scalar images only")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = direction @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image), _LPS_TO_RAS @ m


def _image_to_node(image, nodeClass, name):
    array, ijkToRAS = _arrayAndGeometry(image)
    node = slicer.mrmlScene.AddNewNodeByClass(nodeClass, name)
    node._array, node._ijkToRAS = array, ijkToRAS
    node.CreateDefaultDisplayNodes()
    return node


def saveScene(filename, properties={}):
    """A directory: the .mrml and every node's data (Base/Python/slicer/util.py saveScene). Only
    writes: Slicer fires no event on saving (see slicer._mrmlfile)."""
    from slicer import _mrmlfile

    if filename.endswith((".mrml", ".mrb")):
        raise ValueError("the stand-in saves scenes to a directory (scene and data), as saveScene(directory) does")
    _mrmlfile.write_scene(slicer.mrmlScene, filename)
    return True


def loadScene(filename, properties={}):
    """Adds the scene's nodes to the current scene (vtkMRMLScene::Import, as File > Add Data of a
    .mrml does; close the scene first to reopen one)."""
    from slicer import _mrmlfile

    _mrmlfile.read_scene(slicer.mrmlScene, filename)


def _nameOf(path, properties):
    name = (properties or {}).get("name")
    if name:
        return name
    base = os.path.basename(path)
    for suffix in (".nii.gz", ".nrrd", ".nii", ".mha"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def loadVolume(filename, properties=None, returnNode=False):
    import SimpleITK as sitk

    properties = properties or {}
    nodeClass = "vtkMRMLLabelMapVolumeNode" if properties.get("labelmap") else "vtkMRMLScalarVolumeNode"
    return _image_to_node(sitk.ReadImage(str(filename)), nodeClass, _nameOf(filename, properties))


def loadLabelVolume(filename, properties=None, returnNode=False):
    return loadVolume(filename, {**(properties or {}), "labelmap": True})


def _imageFromNode(node):
    """A volume node's voxels and geometry as a SimpleITK image (LPS, as files store it)."""
    import SimpleITK as sitk

    lps = _LPS_TO_RAS @ node._ijkToRAS
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(node._array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    return image


def exportNode(node, filename, properties=None, world=False):
    """Writes a volume with its geometry; False (and nothing written) when it cannot."""
    import SimpleITK as sitk

    if node._array is None or not os.path.isdir(os.path.dirname(os.path.abspath(filename))):
        return False
    try:
        sitk.WriteImage(_imageFromNode(node), str(filename), bool((properties or {}).get("useCompression", 1)))
    except RuntimeError:
        return False
    return True


def arrayFromVolume(volumeNode):
    return volumeNode._array


def updateVolumeFromArray(volumeNode, narray):
    volumeNode._array = np.array(narray)
    volumeNode.Modified()


def addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
    node = slicer.mrmlScene.AddNewNodeByClass(nodeClassName or "vtkMRMLScalarVolumeNode", name or "")
    node._array = np.array(narray)
    node._ijkToRAS = np.array(ijkToRAS, dtype=float) if ijkToRAS is not None else np.eye(4)
    node.CreateDefaultDisplayNodes()
    return node


def _sameGeometry(segmentationNode, referenceVolumeNode):
    return (segmentationNode._referenceShape == referenceVolumeNode._array.shape
            and np.allclose(segmentationNode._referenceIJKToRAS, referenceVolumeNode._ijkToRAS, atol=1e-4))


def updateSegmentBinaryLabelmapFromArray(narray, segmentationNode, segmentId, referenceVolumeNode=None):
    if referenceVolumeNode is None or segmentationNode._referenceIJKToRAS is None:
        raise ValueError("the stand-in needs the reference volume and a segmentation reference geometry")
    if not _sameGeometry(segmentationNode, referenceVolumeNode) or narray.shape != referenceVolumeNode._array.shape:
        raise ValueError("the labelmap geometry differs from the segmentation's reference geometry "
                         "(the stand-in does not resample)")
    # Base/Python/slicer/util.py updateSegmentBinaryLabelmapFromArray: a "__temp__" label volume is
    # added to the scene, imported into the segment and removed (NodeAdded/NodeRemoved each call)
    temp = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__temp__")
    try:
        segmentationNode.GetSegmentation().GetSegment(segmentId)._labelmap = np.array(narray, dtype=np.uint8)
    finally:
        slicer.mrmlScene.RemoveNode(temp)


def arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolumeNode=None):
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if referenceVolumeNode is not None and not _sameGeometry(segmentationNode, referenceVolumeNode):
        raise ValueError("the reference volume's geometry differs from the segmentation's")
    if segment._labelmap is None:
        return np.zeros(segmentationNode._referenceShape, dtype=np.uint8)
    return segment._labelmap


def setSliceViewerLayers(background="keep-current", foreground="keep-current", label="keep-current",
                         foregroundOpacity=None, labelOpacity=None, fit=False, rotateToVolumePlane=False):
    layers = slicer.app._sliceLayers
    for key, value in (("background", background), ("foreground", foreground), ("label", label)):
        if value != "keep-current":
            layers[key] = value
    if foregroundOpacity is not None:
        layers["foregroundOpacity"] = foregroundOpacity


# ---- modules


def reloadScriptedModule(moduleName):
    """Re-imports the module file (Slicer's Reload) and returns the new module object."""
    old = sys.modules[moduleName]
    path = old.__file__
    spec = importlib.util.spec_from_file_location(moduleName, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[moduleName] = module
    spec.loader.exec_module(module)
    return module

