"""Every event the stand-in fires, each with the Slicer v5.10.0 source line that fires it in real Slicer.

``vtk.vtkObject.InvokeEvent`` refuses any event not listed here, so a stand-in behaviour that real
Slicer does not have (such as a save event: Slicer declares ``StartSaveEvent`` but never invokes it)
fails every test that reaches it. Values are those of ``Libs/MRML/Core/vtkMRMLScene.h`` (enum
``StateEvent | StartEvent | state``) and VTK's ``vtkCommand::ModifiedEvent``.
"""

# name -> (event id, "file:line" in Slicer v5.10.0 of the InvokeEvent / StartState / EndState call)
FIRED = {
    "ModifiedEvent": (33, "Libs/MRML/Core/vtkMRMLNode.h:573 (vtkMRMLNode::Modified -> vtkObject::Modified); "
                          "Libs/MRML/Core/vtkMRMLScene.cxx:373 (Clear), :1587 (RemoveNode)"),
    "NodeAddedEvent": (0x2001, "Libs/MRML/Core/vtkMRMLScene.cxx:1402 (AddNode)"),
    "NodeRemovedEvent": (0x2003, "Libs/MRML/Core/vtkMRMLScene.cxx:1555 (RemoveNode)"),
    "StartCloseEvent": (0x2103, "Libs/MRML/Core/vtkMRMLScene.cxx:356 (Clear -> StartState(CloseState), fired at :741)"),
    "EndCloseEvent": (0x2203, "Libs/MRML/Core/vtkMRMLScene.cxx:383 (Clear -> EndState(CloseState), fired at :764)"),
    "StartImportEvent": (0x2105, "Libs/MRML/Core/vtkMRMLScene.cxx:847 (Import -> StartState(ImportState), fired at :741)"),
    "EndImportEvent": (0x2205, "Libs/MRML/Core/vtkMRMLScene.cxx:954 (Import -> EndState(ImportState), fired at :764)"),
}

ALLOWED_IDS = {event_id: name for name, (event_id, _) in FIRED.items()}
