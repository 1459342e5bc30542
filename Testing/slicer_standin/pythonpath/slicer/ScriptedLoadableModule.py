"""Stand-in for the scripted-module base classes."""

import os
import sys
import unittest

import qt
import slicer


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title = self.moduleName
        parent.categories, parent.dependencies, parent.contributors = [], [], []
        parent.helpText = parent.acknowledgementText = ""

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(sys.modules[type(self).__module__].__file__), "Resources", filename)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else qt.QWidget()
        self.layout = qt.QVBoxLayout()
        self.moduleName = type(self).__name__[: -len("Widget")]
        self.developerMode = False

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(sys.modules[type(self).__module__].__file__), "Resources", filename)

    def setup(self):
        pass

    def cleanup(self):
        pass

    def onReload(self):
        # Slicer cleans the old widget up and builds the new one from the re-read file.
        self.cleanup()
        module = slicer.util.reloadScriptedModule(self.moduleName)
        widget = getattr(module, self.moduleName + "Widget")(self.parent)
        widget.setup()
        setattr(slicer.modules, self.moduleName.lower() + "widget", widget)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[: -len("Logic")]

    def getParameterNode(self):
        # Base/Python/slicer/ScriptedLoadableModule.py getParameterNode / createParameterNode: one
        # singleton node per module (tag = module name), which survives File > Close scene (reset,
        # same node and ID) and takes the content of a loaded scene's parameter node
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            if node.GetAttribute("ModuleName") != self.moduleName:  # reset by a scene close
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(self.moduleName)
        return scene.AddNode(node)


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=1000):
        print(message)
