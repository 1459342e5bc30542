"""Stand-in for the CTK widgets in the module's .ui and the DICOM database Slicer holds."""

import qt


class ctkCollapsibleButton(qt.QAbstractButton):
    def __init__(self, parent=None):
        qt.QAbstractButton.__init__(self, parent)
        self.collapsed = False


class ctkSliderWidget(qt.QWidget):
    _signals = ("valueChanged",)

    def __init__(self, parent=None):
        qt.QWidget.__init__(self, parent)
        self.minimum, self.maximum, self.singleStep, self.pageStep, self.decimals = 0.0, 99.0, 1.0, 10.0, 2
        # tracking off: a drag emits valueChanged once, on release; a value set in code emits at once
        self.tracking = True
        self._value = 0.0

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        value = round(min(max(float(value), self.minimum), self.maximum), int(self.decimals))
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    def setValue(self, value):
        self.value = value


class ctkPathLineEdit(qt.QWidget):
    """A path field with a browse button; the clinician types or picks a folder."""

    _signals = ("currentPathChanged",)
    Dirs, Files = 1, 2

    def __init__(self, parent=None):
        qt.QWidget.__init__(self, parent)
        self.filters = self.Files
        self.showHistoryButton = True
        self._path = ""

    @property
    def currentPath(self):
        return self._path

    @currentPath.setter
    def currentPath(self, path):
        if path != self._path:
            self._path = path
            self.currentPathChanged.emit(path)

    def setCurrentPath(self, path):
        self.currentPath = path


class ctkDICOMDatabase(qt.QObject):
    """Slicer's DICOM database (``slicer.dicomDatabase``): instances indexed by SOP Instance UID,
    their files copied into the database folder when stored (as Slicer does on import)."""

    def __init__(self, parent=None):
        qt.QObject.__init__(self, parent)
        self.databaseDirectory = ""
        self._instances = {}  # SOP Instance UID -> (Series Instance UID, file path)

    def insert(self, filePath, storeFile=True, generateThumbnail=True):
        import os
        import shutil

        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(filePath))
        reader.ReadImageInformation()  # RuntimeError for a file that is not DICOM, as the indexer skips it
        uid = reader.GetMetaData("0008|0018").strip(" \0")
        series = reader.GetMetaData("0020|000e").strip(" \0")
        path = str(filePath)
        if storeFile:
            folder = os.path.join(self.databaseDirectory, "dicom", series)
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, uid + ".dcm")
            shutil.copyfile(filePath, path)
        self._instances[uid] = (series, path)

    def fileForInstance(self, sopInstanceUID):
        return self._instances.get(sopInstanceUID, ("", ""))[1]

    def filesForSeries(self, seriesUID):
        return [path for series, path in self._instances.values() if series == seriesUID]

    def instancesForSeries(self, seriesUID):
        return [uid for uid, (series, _) in self._instances.items() if series == seriesUID]
