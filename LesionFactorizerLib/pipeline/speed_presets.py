"""The ``--preset fast|balanced|best`` speed/accuracy trade-offs of the ``segment`` command.

Not to be confused with :data:`LesionFactorizerLib.presets.PRESETS` (network architectures).
Pure Python, so the Slicer module can offer the same choices without importing torch or numpy.

Thesis 7.4.5: with T ≥ 2 HALS iterations a Swin Factorizer trained with T = 5 keeps its Dice, and
short-circuiting a decoder NMF layer costs little, while the full-resolution layers dominate the
run time.
"""

from __future__ import annotations

from typing import Any

# how windows cover the foreground box (pipeline/window_plan.py says what each computes); every
# preset runs "whole" (the fewest windows of at most two trained patches), chosen from its measured
# agreement with the 0.5-overlap sliding window (README "Window plans"); overlap applies where the
# sliding window runs (--windows sliding, or a network that is not window-local)
WINDOW_PLANS = ("sliding", "whole")

# nmf_iters / skip_nmf None: the model's trained settings.
SPEED_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"nmf_iters": 2, "skip_nmf": ["decoder1"], "tta": False, "overlap": 0.25, "windows": "whole"},
    "balanced": {"nmf_iters": None, "skip_nmf": None, "tta": False, "overlap": 0.5, "windows": "whole"},
    "best": {"nmf_iters": None, "skip_nmf": None, "tta": True, "overlap": 0.5, "windows": "whole"},
}
DEFAULT_SPEED_PRESET = "balanced"
SPEED_PRESET_HELP = ("fast: 2 NMF iterations, decoder1 NMF short-circuited, no TTA, window overlap 0.25; "
                     "balanced (default): the model's trained NMF settings, no TTA, overlap 0.5; "
                     "best: trained settings + mirror TTA (4 passes), overlap 0.5; all: --windows whole")
