"""Stand-in for the ``slicer`` package: application, MRML scene and nodes, segmentations, modules.

Only the surface the LesionFactorizer module touches, with real data behind it: volumes are numpy
arrays with a real IJK-to-RAS geometry, segment labelmaps are arrays in their reference geometry,
scene events reach observers synchronously (as in VTK), and timers run on the Qt stand-in's event
loop. Every public name here exists in the real Slicer API (Testing/slicer/test_slicer_standin_api.py).
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
from _standin_events import FIRED as _FIRED

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
        self._installs = []  # every slicer.util._executePythonModule call (pip, light-the-torch)
        self._packageIndex = {}  # project name -> version the stand-in's package index installs

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
        self._singletonTag = None
        # role -> referenced node ID, as vtkMRMLNode keeps them (one ID per role here); written and
        # read as MRML does (_mrmlfile.py), so a role with ':' breaks exactly as it would in Slicer
        self._references = {}

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

    def SetSingletonTag(self, tag):
        self._singletonTag = tag

    def GetSingletonTag(self):
        return self._singletonTag

    def SetNodeReferenceID(self, referenceRole, referencedNodeID):
        if referencedNodeID:
            self._references[referenceRole] = referencedNodeID
        else:
            self._references.pop(referenceRole, None)
        self.Modified()

    def GetNodeReferenceID(self, referenceRole):
        return self._references.get(referenceRole)

    def GetNodeReference(self, referenceRole):
        nodeID = self._references.get(referenceRole)
        return self._scene.GetNodeByID(nodeID) if nodeID and self._scene is not None else None

    def GetDisplayNode(self):
        return self._displayNode

    def CreateDefaultDisplayNodes(self):
        pass

    def _copyContent(self, other):
        """vtkMRMLNode::CopyContent as AddNode of a singleton and Reset use it: everything but ID and scene."""
        keep = {"_id": self._id, "_scene": self._scene, "_observers": self._observers, "_nextTag": self._nextTag}
        self.__dict__.update({k: v for k, v in other.__dict__.items() if k not in keep})
        self.__dict__.update(keep)
        self.Modified()


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
        self._parentTransformNode = None  # a vtkMRMLLinearTransformNode; voxels are never moved by it here

    def GetParentTransformNode(self):
        return self._parentTransformNode

    def SetAndObserveTransformNodeID(self, transformNodeID):
        self._parentTransformNode = self._scene.GetNodeByID(transformNodeID) if transformNodeID else None
        self.Modified()

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


class vtkMRMLLinearTransformNode(vtkMRMLNode):
    pass


class vtkMRMLColorNode(vtkMRMLNode):
    pass


class vtkMRMLColorTableNode(vtkMRMLColorNode):
    pass


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    def __init__(self):
        vtkMRMLNode.__init__(self)
        self._parameters = {}

    def SetParameter(self, name, value):
        # Libs/MRML/Core/vtkMRMLScriptedModuleNode.cxx SetParameter: Modified only on a change
        if self._parameters.get(name) != str(value):
            self._parameters[name] = str(value)
            self.Modified()

    def GetParameter(self, name):
        return self._parameters.get(name, "")


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
    def __init__(self):
        vtkMRMLDisplayNode.__init__(self)
        self._segmentVisibility = {}  # segment ID -> visible (default: visible)

    def SetSegmentVisibility(self, segmentID, visible):
        self._segmentVisibility[segmentID] = bool(visible)

    def GetSegmentVisibility(self, segmentID):
        return self._segmentVisibility.get(segmentID, True)


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
    """Events and their values as Libs/MRML/Core/vtkMRMLScene.h declares them. StartSaveEvent is
    declared there too, but nothing in Slicer fires it (no StartState(SaveState)), so neither does
    the stand-in: saving is slicer.util.saveScene, which only writes (see _mrmlfile.py)."""

    NodeAddedEvent, NodeRemovedEvent = _FIRED["NodeAddedEvent"][0], _FIRED["NodeRemovedEvent"][0]
    StartCloseEvent, EndCloseEvent = _FIRED["StartCloseEvent"][0], _FIRED["EndCloseEvent"][0]
    StartImportEvent, EndImportEvent = _FIRED["StartImportEvent"][0], _FIRED["EndImportEvent"][0]
    StartSaveEvent, EndSaveEvent = 0x2110, 0x2210

    def __init__(self):
        vtk.vtkObject.__init__(self)
        self._nodes = []
        self._counter = {}
        self._singletons = []
        self._shNode = self._add(vtkMRMLSubjectHierarchyNode(), "SubjectHierarchy", hierarchy=False)
        for name in ("Inferno", "Grey"):
            self._add(vtkMRMLColorTableNode(), name, hierarchy=False)
        self._singletons = list(self._nodes)

    def _add(self, node, name, hierarchy=True, nodeID=None):
        cls = type(node).__name__
        if nodeID is None or self.GetNodeByID(nodeID) is not None:
            self._counter[cls] = self._counter.get(cls, 0) + 1
            while self.GetNodeByID(f"{cls}{self._counter[cls]}") is not None:
                self._counter[cls] += 1
            nodeID = f"{cls}{self._counter[cls]}"
        node._id, node._scene = nodeID, self
        node._name = name or node._name or f"{cls[len('vtkMRML'):-len('Node')]}"
        self._nodes.append(node)
        if hierarchy and not isinstance(node, (vtkMRMLDisplayNode, vtkMRMLScriptedModuleNode)):
            self._shNode._addItem(1, node, node._name)
        self.InvokeEvent(self.NodeAddedEvent, node)
        return node

    def AddNode(self, node):
        # Libs/MRML/Core/vtkMRMLScene.cxx AddNodeNoNotify: a singleton already in the scene keeps
        # its node and ID and takes the new node's content, with no NodeAddedEvent
        existing = self.GetSingletonNode(node.GetSingletonTag(), node.GetClassName()) if node.GetSingletonTag() else None
        if existing is not None:
            existing._copyContent(node)
            return existing
        return self._add(node, node.GetName())

    def CreateNodeByClass(self, className):
        cls = globals().get(className)
        if not (isinstance(cls, type) and issubclass(cls, vtkMRMLNode)):
            raise ValueError(f"unknown MRML node class {className}")
        return cls()

    def AddNewNodeByClass(self, className, nodeBaseName=""):
        return self._add(self.CreateNodeByClass(className), nodeBaseName)

    def GetSingletonNode(self, singletonTag, className):
        return next((n for n in self._nodes if n.IsA(className) and n.GetSingletonTag() == singletonTag), None)

    def RemoveNode(self, node):
        if node in self._nodes:
            self._nodes.remove(node)
            self._shNode._removeNode(node)
            self.InvokeEvent(self.NodeRemovedEvent, node)
            node._scene = None  # as vtkMRMLScene::RemoveNode leaves it: a node outside any scene
            # vtkMRMLScene::RemoveNode also drops every reference to the removed node
            for other in self._nodes:
                for role in [r for r, i in other._references.items() if i == node.GetID()]:
                    del other._references[role]

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

    def Clear(self, removeSingletons=False):
        """Libs/MRML/Core/vtkMRMLScene.cxx Clear(0): StartCloseEvent, every node without a singleton
        tag removed, the singletons reset to a new node's content (ResetNodes, vtkMRMLNode::Reset
        keeps the singleton tag and ID), EndCloseEvent."""
        self.InvokeEvent(self.StartCloseEvent)
        for node in [n for n in self._nodes if n not in self._singletons and not n.GetSingletonTag()]:
            self.RemoveNode(node)
        for node in self._nodes:
            if node.GetSingletonTag() and node not in self._singletons:
                tag = node.GetSingletonTag()
                node._copyContent(type(node)())
                node._singletonTag = tag
        self._shNode._items = {k: v for k, v in self._shNode._items.items() if k == 1 or v["node"] is not None}
        self.Modified()
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
