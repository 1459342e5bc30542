"""The NMF component browser in Slicer: a layer's component maps shown over the reference input
(one volume node per layer, its voxels swapped as the slider moves) and "drop this component"
started from the panel."""

from __future__ import annotations

import slicer
from slicer.i18n import tr as _

from LesionFactorizerModuleLib import components as componentsLib
from LesionFactorizerModuleLib.jobs import CounterfactualResult, SegmentationResult


class ComponentBrowserMixin:
    """Mixed into the module's logic."""

    def showComponent(self, result: SegmentationResult, layerName: str, index: int, opacity=0.5,
                      colorNodeID=None):
        """Show component ``index`` of a layer as the foreground over the reference input.

        The first call for a layer reads its maps and creates its volume node; later calls only
        swap the displayed voxels, so moving the slider is instant.
        """
        layer = result.componentLayers[layerName]
        index = min(max(int(index), 0), layer.count - 1)
        node = result.componentVolumeNodes.get(layerName)
        if node is None:
            node = slicer.util.addVolumeFromArray(
                layer.maps[index], ijkToRAS=layer.ijk_to_ras,
                name=f"{result.referenceVolumeNode.GetName()} NMF {layer.title}")
            self._placeInFolder(result, node, "component")
            result.componentVolumeNodes[layerName] = node
        else:
            slicer.util.updateVolumeFromArray(node, layer.maps[index])
        display = node.GetDisplayNode()
        if display is None:
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(*layer.window(index))
        if colorNodeID:
            display.SetAndObserveColorNodeID(colorNodeID)
        slicer.util.setSliceViewerLayers(background=result.referenceVolumeNode, foreground=node,
                                         foregroundOpacity=opacity)


class ComponentPanelMixin:
    """Mixed into the module's widget."""

    def _configureComponentSlider(self, value=0):
        layer = self._currentLayer()
        slider = self.ui.componentSlider
        wasBlocked = slider.blockSignals(True)
        slider.maximum = max(layer.count - 1, 0) if layer is not None else 0
        slider.value = value
        slider.blockSignals(wasBlocked)

    def onComponentLayerChanged(self, *args):
        self._configureComponentSlider()
        self.onComponentDisplayChanged()

    def _currentLayer(self):
        if self._result is None:
            return None
        return self._result.componentLayers.get(self.ui.componentLayerComboBox.currentData)

    def onComponentDisplayChanged(self, *args):
        layer = self._currentLayer()
        self.ui.componentScoreLabel.text = componentsLib.score_text(layer, int(self.ui.componentSlider.value))
        self.ui.dropComponentButton.enabled = layer is not None and self._result.canDropComponents \
            and self._counterfactualJob is None
        if layer is None:
            return
        colorNode = self.ui.componentColorTableSelector.currentNode()
        self.logic.showComponent(self._result, layer.name, int(self.ui.componentSlider.value),
                                 opacity=self.ui.componentOpacitySlider.value,
                                 colorNodeID=colorNode.GetID() if colorNode else None)

    def onDropComponent(self):
        """Run the counterfactual for the shown component in the worker; the GUI stays responsive."""
        layer = self._currentLayer()
        if layer is None or self._counterfactualJob is not None:
            return
        component = int(self.ui.componentSlider.value)
        self.ui.dropComponentButton.enabled = False
        self.ui.counterfactualLabel.text = _("Segmenting without {layer} #{component}...").format(
            layer=layer.title, component=component)
        try:
            self._counterfactualJob = self.logic.dropComponent(
                self._result, layer.name, component, device=self.ui.deviceComboBox.currentData,
                waitForCompletion=False, completedCallback=self.onCounterfactualDone)
        except Exception as exc:
            self._counterfactualJob = None
            self.ui.counterfactualLabel.text = str(exc)
            self.onComponentDisplayChanged()

    def onCounterfactualDone(self, outcome: "CounterfactualResult"):
        self._counterfactualJob = None
        self.ui.counterfactualLabel.text = outcome.text if outcome.succeeded else outcome.message
        self.onComponentDisplayChanged()
