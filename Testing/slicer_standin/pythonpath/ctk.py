"""Stand-in for the two CTK widgets in the module's .ui."""

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
