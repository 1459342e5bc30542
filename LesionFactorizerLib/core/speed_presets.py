"""The ``--preset fast|balanced|best`` speed/accuracy trade-offs of the ``segment`` command.

Not to be confused with :data:`LesionFactorizerLib.presets.PRESETS` (network architectures).
Pure Python, so the Slicer module can offer the same choices without importing torch or numpy.

Thesis 7.4.5: with T ≥ 2 HALS iterations a Swin Factorizer trained with T = 5 keeps its Dice, and
short-circuiting a decoder NMF layer (NMF(X) := X, its projections and residual kept) costs little,
while the full-resolution layers dominate the run time. ``fast`` short-circuits decoder1 that way;
leaving out its whole branch instead (``set_nmf(drop_branch=…)``) gave the same or a lower Dice
and no measurable speed-up (README, "Speed presets"), so
no preset does.
"""

from __future__ import annotations

from typing import Any

# how windows cover the foreground box (pipeline/window_plan.py says what each computes). Every
# preset runs "whole": on a quiet machine it halved a BraTS-size case's time, and its labels agreed
# with the sliding window's within the scatter of the truth Dice (README "Window plans"); networks
# that are not window-local fall back to "sliding", where the overlap applies
WINDOW_PLANS = ("sliding", "whole")

# nmf_iters / skip_nmf None: the model's trained settings.
SPEED_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"nmf_iters": 2, "skip_nmf": ["decoder1"], "tta": False, "overlap": 0.25, "windows": "whole"},
    "balanced": {"nmf_iters": None, "skip_nmf": None, "tta": False, "overlap": 0.5, "windows": "whole"},
    "best": {"nmf_iters": None, "skip_nmf": None, "tta": True, "overlap": 0.5, "windows": "whole"},
}
DEFAULT_SPEED_PRESET = "balanced"
