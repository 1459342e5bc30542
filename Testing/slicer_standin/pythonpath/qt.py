"""Stand-in for the Qt widgets and services the module uses (PythonQt style: properties as attributes).

Signals are real (connect, emit, blockSignals) and timers run on a real event loop: ``QTimer``
and ``singleShot`` callbacks fire from ``slicer.app.processEvents()`` when they are due, so code
that polls a worker from a timer runs here exactly as it is scheduled in Slicer.
"""

import time


class Signal:
    def __init__(self, owner):
        self._owner = owner
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot=None):
        self._slots = [] if slot is None else [s for s in self._slots if s != slot]

    def emit(self, *args):
        if self._owner is not None and self._owner._blocked:
            return
        for slot in list(self._slots):
            slot(*args)


class QObject:
    _signals = ()

    def __init__(self, parent=None):
        self._blocked = False
        self._properties = {}
        for name in self._signals:
            setattr(self, name, Signal(self))

    def blockSignals(self, block):
        was, self._blocked = self._blocked, bool(block)
        return was

    def setProperty(self, name, value):
        self._properties[name] = value

    def property(self, name):
        return self._properties.get(name)


class Qt:
    UserRole = 256
    Unchecked, Checked = 0, 2
    ItemIsUserCheckable = 16


_ITEM_DEFAULT_FLAGS = 1 | 32  # Qt::ItemIsSelectable | Qt::ItemIsEnabled


# ---- event loop


class _EventLoop:
    def __init__(self):
        self.timers = []  # [QTimer]
        self.calls = []  # [(due, callable)]

    def process(self):
        now = time.monotonic()
        due, self.calls = [c for c in self.calls if c[0] <= now], [c for c in self.calls if c[0] > now]
        for _, function in due:
            function()
        for timer in list(self.timers):
            if timer.active and timer._due <= time.monotonic():
                timer._due = time.monotonic() + timer.interval / 1000.0
                if timer.singleShot:
                    timer.stop()
                timer.timeout.emit()


_loop = _EventLoop()


class QTimer(QObject):
    _signals = ("timeout",)

    def __init__(self, parent=None):
        QObject.__init__(self, parent)
        self.interval = 0
        self.active = False
        self.singleShot = False
        self._due = 0.0

    def setInterval(self, msec):
        self.interval = int(msec)

    def setSingleShot(self, single):
        self.singleShot = bool(single)

    def start(self, msec=None):
        if msec is not None:
            self.interval = int(msec)
        self.active = True
        self._due = time.monotonic() + self.interval / 1000.0
        if self not in _loop.timers:
            _loop.timers.append(self)

    def stop(self):
        self.active = False
        if self in _loop.timers:
            _loop.timers.remove(self)

    def isActive(self):
        return self.active

    @staticmethod
    def singleShot(msec, function):  # noqa: F811 (the static call form of Qt)
        _loop.calls.append((time.monotonic() + msec / 1000.0, function))


# ---- settings (one store per process, like the application's settings file)


class QSettings:
    _store = {}

    def value(self, key, defaultValue=None):
        return QSettings._store.get(key, defaultValue)

    def setValue(self, key, value):
        QSettings._store[key] = value

    def contains(self, key):
        return key in QSettings._store

    def remove(self, key):
        QSettings._store.pop(key, None)


# ---- widgets


class QWidget(QObject):
    def __init__(self, parent=None):
        QObject.__init__(self, parent)
        self.objectName = ""
        self._visible = True
        self.enabled = True
        self.toolTip = ""
        self._styleSheet = ""
        self._children = []

    def setVisible(self, visible):
        self._visible = bool(visible)

    def isVisible(self):
        return self._visible

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def setToolTip(self, text):
        self.toolTip = text

    def setStyleSheet(self, text):
        self._styleSheet = text

    def children(self):
        return list(self._children)


class QLayout(QObject):
    def __init__(self, parent=None):
        QObject.__init__(self, parent)
        self._widgets = []

    def addWidget(self, widget):
        self._widgets.append(widget)

    def addStretch(self, stretch=0):
        pass

    def addLayout(self, layout):
        self._widgets.append(layout)


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFrame(QWidget):
    pass


class QLabel(QFrame):
    def __init__(self, text="", parent=None):
        QFrame.__init__(self, parent)
        self.text = text
        self.wordWrap = False

    def setText(self, text):
        self.text = text

    def setWordWrap(self, on):
        self.wordWrap = bool(on)


class QDialog(QWidget):
    """A dialog shown modeless (``show``): the test drives it while the event loop runs."""

    def __init__(self, parent=None):
        QWidget.__init__(self, parent)
        self._visible = False
        self.windowTitle = ""

    def setWindowTitle(self, title):
        self.windowTitle = title

    def show(self):
        self._visible = True

    def close(self):
        self._visible = False
        return True


class QAbstractButton(QWidget):
    _signals = ("clicked", "toggled")
    _checkable = False

    def __init__(self, text="", parent=None):
        if not isinstance(text, str):   # QPushButton(parent) or QPushButton(text, parent), as in Qt
            text, parent = "", text
        QWidget.__init__(self, parent)
        self.text = text
        self._checked = False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, checked):  # PythonQt: the property setter is setChecked, which emits toggled on a change
        if bool(checked) != self._checked:
            self._checked = bool(checked)
            self.toggled.emit(self._checked)

    def setText(self, text):
        self.text = text

    def click(self):
        """A user's click: nothing happens on a disabled button."""
        if not self.enabled:
            return
        if self._checkable:
            self.setChecked(not self.checked)
        self.clicked.emit()

    def setChecked(self, checked):
        self.checked = bool(checked)


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    _checkable = True


class QComboBox(QWidget):
    _signals = ("currentIndexChanged",)

    def __init__(self, parent=None):
        QWidget.__init__(self, parent)
        self._items = []  # [(text, data)]
        self.currentIndex = -1

    @property
    def count(self):
        return len(self._items)

    @property
    def currentText(self):
        return self._items[self.currentIndex][0] if self.currentIndex >= 0 else ""

    @property
    def currentData(self):
        return self._items[self.currentIndex][1] if self.currentIndex >= 0 else None

    def addItem(self, text, userData=None):
        self._items.append((text, userData))
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def clear(self):
        self._items = []
        self.setCurrentIndex(-1)

    def itemText(self, index):
        return self._items[index][0]

    def itemData(self, index):
        return self._items[index][1]

    def findData(self, data):
        return next((i for i, item in enumerate(self._items) if item[1] == data), -1)

    def findText(self, text):
        return next((i for i, item in enumerate(self._items) if item[0] == text), -1)

    def setCurrentIndex(self, index):
        index = index if -1 <= index < len(self._items) else -1
        if index == self.currentIndex:
            return
        self.currentIndex = index
        self.currentIndexChanged.emit(index)

    def setCurrentText(self, text):
        index = self.findText(text)
        if index >= 0:
            self.setCurrentIndex(index)


class QAbstractSpinBox(QWidget):
    _signals = ("valueChanged",)

    def __init__(self, parent=None):
        QWidget.__init__(self, parent)
        self.minimum, self.maximum, self._value = 0, 99, 0

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        value = min(max(value, self.minimum), self.maximum)
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    def setValue(self, value):
        self.value = value


class QSpinBox(QAbstractSpinBox):
    pass


class QProgressBar(QWidget):
    _signals = ("valueChanged",)

    def __init__(self, parent=None):
        QWidget.__init__(self, parent)
        self.value, self.format, self.minimum, self.maximum = 0, "%p%", 0, 100

    def setValue(self, value):  # QProgressBar::setValue emits valueChanged(int) only when the value changes
        if int(value) != self.value:
            self.value = int(value)
            self.valueChanged.emit(self.value)

    def setFormat(self, text):
        self.format = text


class QPlainTextEdit(QWidget):
    def __init__(self, parent=None):
        QWidget.__init__(self, parent)
        self._lines = []

    def appendPlainText(self, text):
        self._lines.append(text)

    def clear(self):
        self._lines = []

    def toPlainText(self):
        return "\n".join(self._lines)


class QLineEdit(QWidget):
    def __init__(self, parent=None):
        QWidget.__init__(self, parent)
        self.text = ""


class QListWidgetItem:
    def __init__(self, text=""):
        self._text, self._data, self._flags, self._check = text, {}, _ITEM_DEFAULT_FLAGS, None
        self._list = None  # the QListWidget holding it, which emits itemChanged

    def text(self):
        return self._text

    def setData(self, role, value):
        self._data[role] = value

    def data(self, role):
        return self._data.get(role)

    def flags(self):
        return self._flags

    def setFlags(self, flags):
        self._flags = flags

    def setCheckState(self, state):
        changed = state != self._check
        self._check = state
        if changed and self._list is not None:
            self._list.itemChanged.emit(self)

    def checkState(self):
        return self._check


class QListWidget(QWidget):
    _signals = ("itemChanged",)

    def __init__(self, parent=None):
        QWidget.__init__(self, parent)
        self._items = []

    @property
    def count(self):
        return len(self._items)

    def addItem(self, item):
        item = item if isinstance(item, QListWidgetItem) else QListWidgetItem(item)
        item._list = self
        self._items.append(item)

    def item(self, row):
        return self._items[row] if 0 <= row < len(self._items) else None


class QTableWidgetItem:
    def __init__(self, text=""):
        self._text = text
        self._toolTip = ""

    def text(self):
        return self._text

    def setToolTip(self, text):
        self._toolTip = text

    def toolTip(self):
        return self._toolTip


class QTableWidget(QWidget):
    _signals = ("cellClicked",)

    def __init__(self, parent=None):
        QWidget.__init__(self, parent)
        self._cells, self._headers, self.rowCount, self.columnCount = {}, [], 0, 0
        self._currentRow = -1

    def selectRow(self, row):
        self._currentRow = row if 0 <= row < self.rowCount else -1

    def currentRow(self):
        return self._currentRow

    def setRowCount(self, rows):
        self.rowCount = rows
        self._currentRow = self._currentRow if self._currentRow < rows else -1
        self._cells = {k: v for k, v in self._cells.items() if k[0] < rows}

    def setColumnCount(self, columns):
        self.columnCount = columns

    def setHorizontalHeaderLabels(self, labels):
        self._headers = list(labels)

    def setItem(self, row, column, item):
        self._cells[(row, column)] = item

    def item(self, row, column):
        return self._cells.get((row, column))


class QFileDialog:
    _answers = []  # paths the next open dialogs return (harness.answer_next_file_dialogs)

    @staticmethod
    def getOpenFileName(parent=None, caption="", directory="", filter=""):
        return QFileDialog._answers.pop(0) if QFileDialog._answers else ""  # "": the user cancelled

