"""Stand-in for the ``slicer`` package: application, MRML scene and nodes, segmentations, modules.

Only the surface the LesionFactorizer module touches, with real data behind it: volumes are numpy
arrays with a real IJK-to-RAS geometry, segment labelmaps are arrays in their reference geometry,
scene events reach observers synchronously (as in VTK), and timers run on the Qt stand-in's event
loop. Every public name here exists in the real Slicer API (Testing/test_slicer_standin_api.py).
Internals that are not Slicer API start with an underscore; the harness (../harness.py) uses them.
"""

import json
import os
import tempfile
import time
import types

import numpy as np
import qt
import vtk

# ---- application


class _Application(qt.QObject):
    def __init__(self):
        qt.QObject.__init__(self)
        self._connections = {}
        self._startupEnvironment = dict(os.environ)
        self.temporaryPath = tempfile.mkdtemp(prefix="slicer-standin-")
        self._dialogs = []  # (kind, text) of every message box shown
        self._dialogAnswers = []  # answers for the next confirmation boxes (default: OK)
        self._sliceLayers = {}  # what setSliceViewerLayers last showed
        self._sliceJumps = []  # (RAS point, centered) of every JumpSlicesToLocation

    def connect(self, signal, slot):
        self._connections.setdefault(signal, []).append(slot)

    def processEvents(self, *args):
        qt._loop.process()
        time.sleep(0.01)  # a GUI waiting for input; keeps a polling loop from spinning a core


app = _Application()


def _dicomDatabase():
    import ctk

    database = ctk.ctkDICOMDatabase()
    database.databaseDirectory = os.path.join(app.temporaryPath, "DICOMDatabase")
    return database


dicomDatabase = _dicomDatabase()

# ---- MRML nodes


class vtkMRMLNode(vtk.vtkObject):
    def __init__(self):
        vtk.vtkObject.__init__(self)
        self._id, self._name, self._attributes, self._scene = None, "", {}, None
        self._displayNode = None

    def GetID(self):
        return self._id

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = name
        self.Modified()

    def GetAttribute(self, name):
        return self._attributes.get(name)

    def SetAttribute(self, name, value):
        self._attributes[name] = value

    def GetScene(self):
        return self._scene

    def GetDisplayNode(self):
        return self._displayNode

    def CreateDefaultDisplayNodes(self):
        pass


class vtkMRMLDisplayNode(vtkMRMLNode):
    def __init__(self):
        vtkMRMLNode.__init__(self)
        self._colorNodeID = None

    def SetAndObserveColorNodeID(self, colorNodeID):
        self._colorNodeID = colorNodeID

    def GetColorNodeID(self):
        return self._colorNodeID


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLDisplayNode):
    def __init__(self):
        vtkMRMLDisplayNode.__init__(self)
        self._autoWindowLevel, self._range = True, (0.0, 1.0)

    def AutoWindowLevelOff(self):
        self._autoWindowLevel = False

    def GetAutoWindowLevel(self):
        return self._autoWindowLevel

    def SetWindowLevelMinMax(self, minimum, maximum):
        self._range = (float(minimum), float(maximum))

    def GetWindowLevelMin(self):
        return self._range[0]

    def GetWindowLevelMax(self):
        return self._range[1]


class vtkMRMLLabelMapVolumeDisplayNode(vtkMRMLDisplayNode):
    pass


class vtkMRMLVolumeNode(vtkMRMLNode):
    """Voxels (slices, rows, columns) as numpy, with a 4x4 IJK-to-RAS matrix."""

    def __init__(self):
        vtkMRMLNode.__init__(self)
        self._array = None
        self._ijkToRAS = np.eye(4)
        self._parentTransformNode = None  # the stand-in has no transform nodes; volumes sit in world space

    def GetParentTransformNode(self):
        return self._parentTransformNode

    def GetSpacing(self):
        return tuple(float(v) for v in np.linalg.norm(self._ijkToRAS[:3, :3], axis=0))

    def GetOrigin(self):
        return tuple(float(v) for v in self._ijkToRAS[:3, 3])


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    _displayClass = vtkMRMLScalarVolumeDisplayNode

    def CreateDefaultDisplayNodes(self):
        if self._displayNode is None:
            self._displayNode = self._scene.AddNewNodeByClass(self._displayClass.__name__)


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    _displayClass = vtkMRMLLabelMapVolumeDisplayNode


class vtkMRMLColorNode(vtkMRMLNode):
    pass


class vtkMRMLColorTableNode(vtkMRMLColorNode):
    pass


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    def __init__(self):
        vtkMRMLNode.__init__(self)
        self._parameters, self._references = {}, {}

    def SetParameter(self, name, value):
        self._parameters[name] = str(value)
        self.Modified()

    def GetParameter(self, name):
        return self._parameters.get(name, "")

    def SetNodeReferenceID(self, referenceRole, referencedNodeID):
        self._references[referenceRole] = referencedNodeID or None
        self.Modified()

    def GetNodeReference(self, role):
        return self._scene.GetNodeByID(self._references.get(role)) if self._references.get(role) else None


class vtkSegment(vtk.vtkObject):
    def __init__(self):
        vtk.vtkObject.__init__(self)
        self._name, self._color, self._tags = "", (0.5, 0.5, 0.5), {}
        self._labelmap = None  # uint8 array in the segmentation's reference geometry

    @staticmethod
    def GetTerminologyEntryTagName():
        return "TerminologyEntry"

    def GetName(self):
        return self._name

    def SetName(self, name):
        self._name = name

    def GetColor(self):
        return self._color

    def SetColor(self, r, g, b):
        self._color = (float(r), float(g), float(b))

    def SetTag(self, tag, value):
        self._tags[tag] = str(value)

    def GetTag(self, tag, value):
        if tag not in self._tags:
            return False
        value.set(self._tags[tag])
        return True

    def HasTag(self, tag):
        return tag in self._tags


class vtkSegmentation(vtk.vtkObject):
    def __init__(self):
        vtk.vtkObject.__init__(self)
        self._segments = {}  # id -> vtkSegment, in order
        self._counter = 0

    def AddEmptySegment(self, segmentId="", segmentName="", color=None):
        self._counter += 1
        segmentId = segmentId or f"Segment_{self._counter}"
        segment = vtkSegment()
        segment.SetName(segmentName or segmentId)
        if color is not None:
            segment.SetColor(*color)
        self._segments[segmentId] = segment
        return segmentId

    def RemoveSegment(self, segmentId):
        self._segments.pop(segmentId, None)

    def GetSegment(self, segmentId):
        return self._segments.get(segmentId)

    def GetSegmentIdBySegmentName(self, name):
        return next((i for i, s in self._segments.items() if s.GetName() == name), "")

    def GetNumberOfSegments(self):
        return len(self._segments)

    def GetNthSegmentID(self, index):
        return list(self._segments)[index]


class vtkMRMLSegmentationDisplayNode(vtkMRMLDisplayNode):
    pass


class vtkMRMLSegmentationNode(vtkMRMLNode):
    def __init__(self):
        vtkMRMLNode.__init__(self)
        self._segmentation = vtkSegmentation()
        self._referenceIJKToRAS, self._referenceShape = None, None

    def GetSegmentation(self):
        return self._segmentation

    def CreateDefaultDisplayNodes(self):
        if self._displayNode is None:
            self._displayNode = self._scene.AddNewNodeByClass("vtkMRMLSegmentationDisplayNode")

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode):
        self._referenceIJKToRAS = np.array(volumeNode._ijkToRAS)
        self._referenceShape = volumeNode._array.shape


class vtkMRMLSubjectHierarchyNode(vtkMRMLNode):
    """Items are integers; the scene item is 1 and new data nodes are placed under it."""

    def __init__(self):
        vtkMRMLNode.__init__(self)
        self._items = {1: {"parent": 0, "node": None, "name": "Scene"}}
        self._next = 2

    def GetSceneItemID(self):
        return 1

    def _addItem(self, parent, node, name):
        item, self._next = self._next, self._next + 1
        self._items[item] = {"parent": parent, "node": node, "name": name}
        return item

    def _removeNode(self, node):
        self._items = {k: v for k, v in self._items.items() if v["node"] is not node}

    def GetItemByDataNode(self, node):
        return next((k for k, v in self._items.items() if v["node"] is node and node is not None), 0)

    def GetItemDataNode(self, item):
        return self._items.get(item, {}).get("node")

    def GetItemParent(self, item):
        return self._items.get(item, {}).get("parent", 0)

    def SetItemParent(self, item, parent):
        if item not in self._items or parent not in self._items:
            raise ValueError(f"invalid subject hierarchy item {item} or parent {parent}")
        self._items[item]["parent"] = parent

    def GetItemName(self, item):
        return self._items.get(item, {}).get("name", "")

    def CreateFolderItem(self, parent, name):
        return self._addItem(parent, None, name)


class vtkMRMLScene(vtk.vtkObject):
    NodeAddedEvent, NodeRemovedEvent, StartCloseEvent, EndCloseEvent = 66000, 66001, 66003, 66004
    StartSaveEvent, EndSaveEvent, StartImportEvent, EndImportEvent = 66009, 66010, 66007, 66008

    def __init__(self):
        vtk.vtkObject.__init__(self)
        self._nodes = []
        self._counter = {}
        self._singletons = []
        self._shNode = self._add(vtkMRMLSubjectHierarchyNode(), "SubjectHierarchy", hierarchy=False)
        for name in ("Inferno", "Grey"):
            self._add(vtkMRMLColorTableNode(), name, hierarchy=False)
        self._singletons = list(self._nodes)

    def _add(self, node, name, hierarchy=True):
        cls = type(node).__name__
        self._counter[cls] = self._counter.get(cls, 0) + 1
        node._id, node._scene = f"{cls}{self._counter[cls]}", self
        node._name = name or node._name or f"{cls[len('vtkMRML'):-len('Node')]}"
        self._nodes.append(node)
        if hierarchy and not isinstance(node, (vtkMRMLDisplayNode, vtkMRMLScriptedModuleNode)):
            self._shNode._addItem(1, node, node._name)
        self.InvokeEvent(self.NodeAddedEvent, node)
        return node

    def AddNode(self, node):
        return self._add(node, node.GetName())

    def AddNewNodeByClass(self, className, nodeBaseName=""):
        cls = globals().get(className)
        if not (isinstance(cls, type) and issubclass(cls, vtkMRMLNode)):
            raise ValueError(f"unknown MRML node class {className}")
        return self._add(cls(), nodeBaseName)

    def RemoveNode(self, node):
        if node in self._nodes:
            self._nodes.remove(node)
            self._shNode._removeNode(node)
            self.InvokeEvent(self.NodeRemovedEvent, node)
            node._scene = None  # as vtkMRMLScene::RemoveNode leaves it: a node outside any scene

    def GetNodeByID(self, nodeID):
        return next((n for n in self._nodes if n.GetID() == nodeID), None)

    def GetFirstNodeByName(self, name):
        return next((n for n in self._nodes if n.GetName() == name), None)

    def GetNodesByClass(self, className):
        return [n for n in self._nodes if n.IsA(className)]

    def GetNumberOfNodes(self):
        return len(self._nodes)

    def GetSubjectHierarchyNode(self):
        return self._shNode

    def Commit(self, url=None):
        """Saving the scene: observers update what they keep in nodes (nothing is written here)."""
        self.InvokeEvent(self.StartSaveEvent)
        self.InvokeEvent(self.EndSaveEvent)
        return 1

    def Clear(self, removeSingletons=False):
        self.InvokeEvent(self.StartCloseEvent)
        for node in [n for n in self._nodes if n not in self._singletons]:
            self.RemoveNode(node)
        self.InvokeEvent(self.EndCloseEvent)


mrmlScene = vtkMRMLScene()

# ---- MRML widgets (the qMRML classes of the .ui)


class qMRMLWidget(qt.QWidget):
    _signals = ("mrmlSceneChanged",)

    def setMRMLScene(self, scene):
        self.mrmlSceneChanged.emit(scene)


class qMRMLNodeComboBox(qt.QWidget):
    """Offers the scene's nodes of ``nodeTypes``; forgets a node that leaves the scene."""

    _signals = ("currentNodeChanged",)

    def __init__(self, parent=None):
        qt.QWidget.__init__(self, parent)
        self.nodeTypes, self.noneEnabled, self.showChildNodeTypes = [], False, True
        self.addEnabled = self.removeEnabled = self.renameEnabled = False
        self.noneDisplay = ""
        self._node, self._scene = None, None

    def setMRMLScene(self, scene):
        self._scene = scene
        scene.AddObserver(scene.NodeRemovedEvent, self._onNodeRemoved)
        scene.AddObserver(scene.NodeAddedEvent, self._onNodeAdded)

    def _accepts(self, node):
        if self.showChildNodeTypes:
            return any(node.IsA(t) for t in self.nodeTypes)
        return node.GetClassName() in self.nodeTypes

    def nodes(self):
        return [n for n in self._scene.GetNodesByClass("vtkMRMLNode") if self._accepts(n)] if self._scene else []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAdded(self, caller, event, node):
        if self._node is None and not self.noneEnabled and self._accepts(node):
            self.setCurrentNode(node)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeRemoved(self, caller, event, node):
        if node is self._node:
            self.setCurrentNode(None)

    def currentNode(self):
        return self._node

    @property
    def currentNodeID(self):
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node):
        if node is not None and (node not in self.nodes()):
            raise ValueError(f"{node.GetName()} cannot be chosen in a selector of {self.nodeTypes}")
        if node is self._node:
            return
        self._node = node
        self.currentNodeChanged.emit(node)

    def setCurrentNodeID(self, nodeID):
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if nodeID else None)


class qMRMLColorTableComboBox(qMRMLNodeComboBox):
    def __init__(self, parent=None):
        qMRMLNodeComboBox.__init__(self, parent)
        self.nodeTypes = ["vtkMRMLColorNode"]


class qMRMLSegmentationShow3DButton(qt.QPushButton):
    def __init__(self, parent=None):
        qt.QPushButton.__init__(self, parent)
        self._segmentationNode = None

    def setSegmentationNode(self, node):
        self._segmentationNode = node

    def segmentationNode(self):
        return self._segmentationNode


# ---- loadable modules


class vtkSlicerTerminologiesModuleLogic(vtk.vtkObject):
    """Reads a category/type context file and keeps it by its context name."""

    def __init__(self):
        vtk.vtkObject.__init__(self)
        self._contexts = {}

    def LoadTerminologyFromFile(self, filePath):
        try:
            with open(filePath, encoding="utf-8") as f:
                context = json.load(f)
            name = context["SegmentationCategoryTypeContextName"]
            context["SegmentationCodes"]["Category"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        self._contexts[name] = context
        return True

    def GetLoadedTerminologyNames(self, names=None):
        return sorted(self._contexts)


class vtkSlicerMarkupsLogic(vtk.vtkObject):
    """Only the slice-view jump the module uses; the jumps are recorded for the tests."""

    def JumpSlicesToLocation(self, x, y, z, centered, viewGroup=-1, exclude=None):
        app._sliceJumps.append(((float(x), float(y), float(z)), bool(centered)))


class _LoadableModule:
    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


modules = types.SimpleNamespace(terminologies=_LoadableModule(vtkSlicerTerminologiesModuleLogic()),
                                markups=_LoadableModule(vtkSlicerMarkupsLogic()))

from slicer import util  # noqa: E402  (util uses the names above)
