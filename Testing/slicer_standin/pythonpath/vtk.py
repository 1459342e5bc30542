"""Stand-in for the few ``vtk`` names the module uses: observers, events, ``mutable``."""

VTK_OBJECT = 13


class mutable:
    """An out-parameter, as VTK's Python wrapping passes them (``GetTag(name, value)``)."""

    def __init__(self, value=None):
        self._value = value

    def get(self):
        return self._value

    def set(self, value):
        self._value = value


def calldata_type(kind):
    """Marks an observer that wants the event's call data (the node of NodeAdded/NodeRemoved)."""
    def mark(function):
        function.CallDataType = kind
        return function
    return mark


_MODIFIED_EVENT = 33  # vtkCommand::ModifiedEvent

# Every event fired goes through InvokeEvent, which fires only events real Slicer fires.
_fired = []  # event ids fired so far in this process, for Testing/slicer/test_slicer_standin_events.py


class vtkObject:
    """Observers called synchronously, in registration order, like VTK's subject/observer."""

    def __init__(self):
        self._observers = {}
        self._nextTag = 1

    def GetClassName(self):
        return type(self).__name__

    def IsA(self, name):
        return any(c.__name__ == name for c in type(self).__mro__)

    def AddObserver(self, event, callback, priority=0.0):
        tag = self._nextTag
        self._nextTag += 1
        self._observers[tag] = (event, callback)
        return tag

    def RemoveObserver(self, tag):
        self._observers.pop(tag, None)

    def HasObserver(self, event, callback=None):
        return any(e == event and (callback is None or c == callback) for e, c in self._observers.values())

    def InvokeEvent(self, event, callData=None):
        from _standin_events import ALLOWED_IDS

        if event not in ALLOWED_IDS:
            raise AssertionError(f"the stand-in fired event {event}, which real Slicer does not fire "
                                 f"(list: Testing/slicer_standin/pythonpath/_standin_events.py)")
        _fired.append(event)
        for tag, (e, callback) in list(self._observers.items()):
            if e == event and tag in self._observers:
                if callData is not None and getattr(callback, "CallDataType", None) is not None:
                    callback(self, event, callData)
                else:
                    callback(self, event)

    def Modified(self):
        self.InvokeEvent(_MODIFIED_EVENT)
