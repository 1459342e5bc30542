"""Stand-in for ``DICOMLib.DICOMUtils``: importing files into the DICOM database and loading a
series from it as a volume, as the DICOM module does (SimpleITK reads the series; the node records
its instances in ``DICOM.instanceUIDs`` in slice order, as Slicer's scalar volume plugin does)."""

import os

import slicer


def importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False):
    database = dicomDatabase or slicer.dicomDatabase
    for folder, _, names in os.walk(str(dicomDataDir)):
        for name in sorted(names):
            try:
                database.insert(os.path.join(folder, name), copyFiles)
            except RuntimeError:
                continue  # not a DICOM file: the indexer skips it


def loadSeriesByUID(seriesUIDs, messages=None, progressCallback=None, enabledPluginClassNames=None):
    import SimpleITK as sitk

    from slicer import util

    loaded = []
    for seriesUID in seriesUIDs:
        files = slicer.dicomDatabase.filesForSeries(seriesUID)
        if not files:
            continue
        ordered = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(os.path.dirname(files[0]), seriesUID)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(ordered)
        reader.MetaDataDictionaryArrayUpdateOn()
        image = reader.Execute()
        uids = [reader.GetMetaData(k, "0008|0018").strip(" \0") for k in range(len(ordered))]
        description = reader.GetMetaData(0, "0008|103e").strip(" \0") if reader.HasMetaDataKey(0, "0008|103e") else ""
        node = util._image_to_node(image, "vtkMRMLScalarVolumeNode", description or seriesUID)
        node.SetAttribute("DICOM.instanceUIDs", " ".join(uids))
        loaded.append(node.GetID())
    return loaded
