"""The group counterfactuals of the thesis's ablations, beside "drop one component"
(``counterfactual.dropped``): what a layer's NMF contributes as a whole, and one component alone.

- ``skip``: the whole layer short-circuited through the network's own switch
  (``set_nmf(skip=…)``; its meaning — the NMF treated as the identity, NMF(X) := X — is the
  network's, so this follows it);
- ``keep``: the layer's reconstruction from that one component only (``NMF.keep``).

Torch-free at import: these only switch attributes of a loaded network.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

# The difference labelmap of a counterfactual (its segmentation against the run's): the values and
# their names, shared by the counterfactual's outputs, the effect pass and the Slicer difference segments.
DIFFERENCE = {0: "unchanged", 1: "added", 2: "removed", 3: "relabelled"}
MODES = ("drop", "keep", "skip")   # counterfactual --keep / --whole-layer; drop is the default
NOTES = {"keep": "segmentation with this NMF layer reconstructing its input from this one component alone, compared "
                 "with the segmentation of the source run; everything else as recorded in its report.json",
         "skip": "segmentation with this whole NMF layer short-circuited (the network's --skip-nmf switch), compared "
                 "with the segmentation of the source run; everything else as recorded in its report.json"}


@dataclass(frozen=True)
class DropComponent:
    """The counterfactual's one change to a recorded run (``Segmenter.from_report``): ``mode`` (one
    of :data:`MODES`) applied to ``component`` of NMF ``layer``. None: chosen from the run's
    rankings (``counterfactual.choose``); ``skip`` needs the layer and takes no component."""

    layer: str | None = None
    component: int | None = None
    mode: str = "drop"


def component_count(model, layer: str) -> int:
    """K = heads × rank of a Factorizer layer: the components its maps (and ``--component``) number."""
    wrapped = model.nmf_layers()[layer]
    return wrapped.in_proj.in_features // wrapped.matricize.head_dim * wrapped.nmf.rank


def difference_map(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """0 unchanged, 1 added, 2 removed, 3 relabelled (see :data:`DIFFERENCE`)."""
    diff = np.zeros(before.shape, dtype=np.uint8)
    diff[(before == 0) & (after > 0)] = 1
    diff[(before > 0) & (after == 0)] = 2
    diff[(before > 0) & (after > 0) & (before != after)] = 3
    return diff


@contextlib.contextmanager
def selected(model, layer: str, component: int, how: str):
    """Within the block, ``layer``'s NMF reconstructs without ``component`` (``how="drop"``,
    ``NMF.drop``) or from it alone (``how="keep"``, ``NMF.keep``), in any forward path."""
    wrapped = model.nmf_layers()[layer]
    heads = wrapped.in_proj.in_features // wrapped.matricize.head_dim
    if not 0 <= int(component) < heads * wrapped.nmf.rank:
        raise ValueError(f"layer {layer} has components 0 to {heads * wrapped.nmf.rank - 1}, not {component}")
    setattr(wrapped.nmf, how, (heads, int(component)))
    try:
        yield
    finally:
        setattr(wrapped.nmf, how, None)


def kept(model, layer: str, component: int):
    """Within the block, ``layer``'s NMF reconstructs from ``component`` alone."""
    return selected(model, layer, component, "keep")


@contextlib.contextmanager
def short_circuited(model, layer: str):
    """Within the block, ``layer`` is short-circuited as ``--skip-nmf`` does, on top of the layers the
    run already skipped (restored afterwards)."""
    before = [name for name, wrapped in model.nmf_layers().items() if wrapped.skip]
    model.set_nmf(skip=[*before, layer])
    try:
        yield
    finally:
        model.set_nmf(skip=before)


def variant(model, layer: str, component: int | None, mode: str):
    """The context of one counterfactual: ``mode`` (:data:`MODES`) applied to ``layer``/``component``."""
    if mode == "skip":
        return short_circuited(model, layer)
    return selected(model, layer, int(component), mode)


def folder_name(layer: str, component: int | None, mode: str) -> str:
    """``<layer>-<k>`` (drop), ``<layer>-keep-<k>``, ``<layer>-skipped``: one folder per variant."""
    return {"drop": f"{layer}-{component}", "keep": f"{layer}-keep-{component}", "skip": f"{layer}-skipped"}[mode]


def describe(layer: str, component: int | None, mode: str) -> str:
    return {"drop": f"without {layer} #{component}", "keep": f"{layer} with only #{component}",
            "skip": f"{layer} short-circuited"}[mode]
