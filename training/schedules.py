"""Learning-rate schedules (stepped once per optimiser step)."""

from __future__ import annotations

import math


class WarmupCosine:
    """Factor ``step/warmup`` during warm-up, then ``½(1 + cos(π·(step−warmup)/(total−warmup)))``,
    reaching 0 at ``total`` (reference: 2 000 warm-up steps, 100 000 total).

    A class rather than a lambda so its state is plain data in a checkpoint."""

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
