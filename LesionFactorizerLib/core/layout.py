"""Names of the blocks of the U-shaped networks, torch-free so the Slicer GUI can offer them."""

from __future__ import annotations

from typing import List, Tuple

# Levels of the Factorizer presets (widths 32…512 or 8…128): NMF layers encoder1…4, bridge, decoder4…1.
FACTORIZER_LEVELS = 5


def layer_names(levels: int) -> List[Tuple[str, int, str]]:
    """(name, level, role) of every block in execution order: encoder1…, bridge, decoder…1."""
    enc = [(f"encoder{i + 1}", i, "encoder") for i in range(levels - 1)]
    dec = [(f"decoder{i + 1}", i, "decoder") for i in reversed(range(levels - 1))]
    return enc + [("bridge", levels - 1, "bridge")] + dec


NMF_LAYERS = tuple(name for name, _level, _role in layer_names(FACTORIZER_LEVELS))
