"""Writing and reading a scene the way MRML does, so that what a module keeps in nodes meets the
same encoding and parsing it meets in Slicer.

Imitated (Slicer v5.10.0):
  * Libs/MRML/Core/vtkMRMLNode.cxx WriteXML / ReadXMLAttributes: ``attributes="name:value;..."``
    (value with '%' and ';' escaped, split at the first ':' on reading) and
    ``references="role:id;role2:id2;"`` written without escaping the role and parsed by
    ParseReferencesAttribute, which cuts each entry at its first ':' (a role holding ':' is read
    back as another role); XMLAttributeEncodeString for every value.
  * Libs/MRML/Core/vtkMRMLScriptedModuleNode.cxx WriteXML / ReadXMLAttributes: one
    ``parameterN="name value"`` attribute per parameter, the name's ' ' and '%' escaped, split at
    the first space on reading.
  * Libs/MRML/Core/vtkMRMLSegmentationDisplayNode.cxx WriteXML: per-segment visibility in
    ``SegmentationDisplayProperties``.
  * Libs/MRML/Core/vtkMRMLScene.cxx Import: StartImportEvent, nodes added (a singleton already in
    the scene keeps its ID and takes the loaded content, with references to it renamed), node IDs
    kept unless taken, references to nodes outside the file dropped, EndImportEvent.
  * Base/Python/slicer/util.py saveScene(directory): the .mrml and every node's data under Data/
    (volumes as .nrrd by the volume archetype storage node, segmentations as .seg.nrrd by the
    segmentation storage node; written here with SimpleITK and slicerio).
Storage nodes are written as elements but not kept as nodes after reading (the stand-in keeps data
in its data nodes).
"""

import os
import xml.etree.ElementTree as ET

import numpy as np

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# class -> MRML XML tag (each class's GetNodeTagName)
TAGS = {
    "vtkMRMLScalarVolumeNode": "Volume",
    "vtkMRMLLabelMapVolumeNode": "LabelMapVolume",
    "vtkMRMLScalarVolumeDisplayNode": "VolumeDisplay",
    "vtkMRMLLabelMapVolumeDisplayNode": "LabelMapVolumeDisplay",
    "vtkMRMLSegmentationNode": "Segmentation",
    "vtkMRMLSegmentationDisplayNode": "SegmentationDisplay",
    "vtkMRMLScriptedModuleNode": "ScriptedModule",
}
_STORAGE = {"vtkMRMLScalarVolumeNode": ("VolumeArchetypeStorage", ".nrrd"),
            "vtkMRMLLabelMapVolumeNode": ("VolumeArchetypeStorage", ".nrrd"),
            "vtkMRMLSegmentationNode": ("SegmentationStorage", ".seg.nrrd")}
_INTERNAL_ROLES = ("display", "storage")  # kept by the stand-in's nodes in their own fields


def encode(text):
    """vtkMRMLNode::XMLAttributeEncodeString."""
    for a, b in (("&", "&amp;"), ('"', "&quot;"), ("'", "&apos;"), ("<", "&lt;"), (">", "&gt;"),
                 ("\n", "&#10;"), ("\r", "&#13;")):
        text = text.replace(a, b)
    return text


def _node_attributes(node, storageID, fileName):
    out = [("id", node.GetID()), ("name", node.GetName()), ("hideFromEditors", "false"),
           ("selectable", "true"), ("selected", "false")]
    if node.GetSingletonTag():
        out.append(("singletonTag", node.GetSingletonTag()))
    if node._attributes:
        parts = []
        for name, value in node._attributes.items():
            value = str(value).replace("%", "%25").replace(";", "%3B")
            parts.append(f"{name}:{value}")
        out.append(("attributes", ";".join(parts)))
    references = dict(node._references)
    if node.GetDisplayNode() is not None:
        references["display"] = node.GetDisplayNode().GetID()
    if storageID:
        references["storage"] = storageID
    if references:
        out.append(("references", "".join(f"{role}:{nodeID};" for role, nodeID in references.items())))
    cls = node.GetClassName()
    if cls == "vtkMRMLScriptedModuleNode":
        for i, (name, value) in enumerate(node._parameters.items()):
            name = name.replace("%", "%25").replace(" ", "%20")
            out.append((f"parameter{i}", f"{name} {value}"))
    if cls == "vtkMRMLSegmentationDisplayNode":
        props = "".join(f"{segmentID} Visible:{'true' if visible else 'false'}|"
                        for segmentID, visible in node._segmentVisibility.items())
        out.append(("SegmentationDisplayProperties", props))
    return out


def write_scene(scene, directory):
    """The scene as ``directory/<name>.mrml`` plus its data in ``directory/Data``; returns the .mrml path."""
    directory = os.path.abspath(directory)
    os.makedirs(os.path.join(directory, "Data"), exist_ok=True)
    lines = ['<MRML  version="Slicer5.10.0" userTags="">']
    for node in scene._nodes:
        cls = node.GetClassName()
        if cls not in TAGS:
            continue  # subject hierarchy and default colour tables: the application's own nodes
        storageID = fileName = None
        if cls in _STORAGE and (getattr(node, "_array", None) is not None or cls == "vtkMRMLSegmentationNode"):
            tag, suffix = _STORAGE[cls]
            storageID = f"vtkMRML{tag}Node{node.GetID()}"
            fileName = os.path.join("Data", _file_stem(node) + suffix)
            _write_data(node, os.path.join(directory, fileName))
            lines.append(f' <{tag} id="{encode(storageID)}" fileName="{encode(fileName)}"></{tag}>')
        attributes = " ".join(f'{name}="{encode(str(value))}"'
                              for name, value in _node_attributes(node, storageID, fileName))
        lines.append(f" <{TAGS[cls]} {attributes}></{TAGS[cls]}>")
    lines.append("</MRML>")
    path = os.path.join(directory, os.path.basename(directory.rstrip(os.sep)) + ".mrml")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _file_stem(node):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in node.GetName()) + "-" + node.GetID()


def _write_data(node, path):
    import SimpleITK as sitk

    if node.GetClassName() != "vtkMRMLSegmentationNode":
        from slicer.util import _imageFromNode

        sitk.WriteImage(_imageFromNode(node), path, True)
        return
    import slicerio
    from slicerio.segmentation import terminology_entry_from_string

    shape_kji = node._referenceShape
    segmentation = slicerio.create_segmentation(tuple(reversed(shape_kji)), _LPS_TO_RAS @ node._referenceIJKToRAS)
    for segmentID, segment in node.GetSegmentation()._segments.items():
        mask = segment._labelmap if segment._labelmap is not None else np.zeros(shape_kji, np.uint8)
        fields = {"id": segmentID, "name": segment.GetName(), "color": list(segment.GetColor())}
        tags = dict(segment._tags)
        if "TerminologyEntry" in tags:
            fields["terminology"] = terminology_entry_from_string(tags.pop("TerminologyEntry"))
        if tags:
            fields["tags"] = tags
        slicerio.add_segment(segmentation, np.transpose(mask > 0, (2, 1, 0)), fields)
    slicerio.write_segmentation(path, segmentation)


def _parse_references(text):
    """vtkMRMLNode::ParseReferencesAttribute: entries cut at ';', each one's role up to its first ':'."""
    references = {}
    for entry in text.split(";"):
        if ":" not in entry or entry.startswith(":"):
            continue
        role, ids = entry.split(":", 1)
        if role in references:
            continue  # a role already read is skipped, as MRML does
        ids = ids.split()
        if ids:
            references[role] = ids[0]
    return references


def read_scene(scene, path):
    """vtkMRMLScene::Import of a .mrml file written by write_scene (or by Slicer, for these node types)."""
    import slicer

    directory = os.path.dirname(os.path.abspath(path))
    root = ET.parse(path).getroot()
    scene.InvokeEvent(scene.StartImportEvent)
    files, loaded = {}, []
    tag_to_class = {tag: cls for cls, tag in TAGS.items()}
    for element in root:
        if element.tag.endswith("Storage"):
            files[element.get("id")] = os.path.join(directory, element.get("fileName"))
            continue
        cls = tag_to_class.get(element.tag)
        if cls is None:
            continue
        node = scene.CreateNodeByClass(cls)
        node._name = element.get("name", "")
        node._singletonTag = element.get("singletonTag")
        for entry in filter(None, element.get("attributes", "").split(";")):
            name, _, value = entry.partition(":")
            node._attributes[name] = value.replace("%3B", ";").replace("%25", "%")
        node._references = _parse_references(element.get("references", ""))
        if cls == "vtkMRMLScriptedModuleNode":
            for name, value in element.attrib.items():
                if name.startswith("parameter"):
                    key, _, text = value.partition(" ")
                    node._parameters[key.replace("%20", " ").replace("%25", "%")] = text
        if cls == "vtkMRMLSegmentationDisplayNode":
            for entry in filter(None, element.get("SegmentationDisplayProperties", "").split("|")):
                segmentID, *props = entry.split(" ")
                node._segmentVisibility[segmentID] = "Visible:false" not in props
        loaded.append((element.get("id"), node))
    renamed = {}
    for fileID, node in loaded:
        if node.GetSingletonTag() and scene.GetSingletonNode(node.GetSingletonTag(), node.GetClassName()):
            added = scene.AddNode(node)
        else:
            added = scene._add(node, node._name, nodeID=fileID)
        renamed[fileID] = added.GetID()
    for _, node in loaded:
        target = scene.GetSingletonNode(node.GetSingletonTag(), node.GetClassName()) if node.GetSingletonTag() else node
        references = {role: renamed.get(i, i) for role, i in node._references.items() if i in renamed or i in files}
        if "display" in references:
            target._displayNode = scene.GetNodeByID(references["display"])
        if "storage" in node._references and node._references["storage"] in files:
            _read_data(target, files[node._references["storage"]], slicer)
        # vtkMRMLScene::Import drops references to nodes the file does not hold
        target._references = {r: i for r, i in references.items() if r not in _INTERNAL_ROLES}
    scene.InvokeEvent(scene.EndImportEvent)


def _read_data(node, path, slicer):
    import SimpleITK as sitk

    if node.GetClassName() != "vtkMRMLSegmentationNode":
        image = sitk.ReadImage(path)
        node._array, node._ijkToRAS = slicer.util._arrayAndGeometry(image)
        return
    import slicerio
    from slicerio.segmentation import terminology_entry_to_string

    segmentation = slicerio.read_segmentation(path)
    node._referenceIJKToRAS = _LPS_TO_RAS @ np.asarray(segmentation["ijkToLPS"], dtype=float)
    node._referenceShape = tuple(reversed(segmentation["voxels"].shape[-3:]))
    for fields in segmentation["segments"]:
        segmentID = node.GetSegmentation().AddEmptySegment(fields["id"], fields.get("name", ""), fields.get("color"))
        segment = node.GetSegmentation().GetSegment(segmentID)
        for key, value in (fields.get("tags") or {}).items():
            segment.SetTag(key, value)
        if "terminology" in fields:
            segment.SetTag("TerminologyEntry", terminology_entry_to_string(fields["terminology"]))
        mask = slicerio.segment_mask(segmentation, fields)
        segment._labelmap = np.ascontiguousarray(np.transpose(mask, (2, 1, 0))).astype(np.uint8)
