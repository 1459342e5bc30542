"""A stage whose cost is known only once the run is under way (the effect ranking's) gets its weight
then: the bar never moves back, never jumps, and the stages still to come share what is left of it
in proportion to their weights."""

from __future__ import annotations

import io
import json

import pytest

from LesionFactorizerLib.pipeline.progress import Progress


def _fractions(stream: io.StringIO) -> list[tuple[str, float]]:
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [(e["stage"], e["fraction"]) for e in events if e["event"] == "progress"]


def test_later_stages_share_what_is_left_in_proportion():
    stream = io.StringIO()
    progress = Progress("jsonl", stream=stream, min_interval=0.0, stages=(("a", 1.0), ("b", 0.0), ("c", 1.0)))
    progress.stage("a")
    progress.update(0.5)                  # half of a: a quarter of the bar
    progress.replan({"b": 6.0})           # b costs six times c
    progress.update(1.0)                  # a is over where it stood when b's weight became known
    for name in ("b", "c"):
        progress.stage(name)
        progress.update(0.5)
        progress.update(1.0)
    progress.done({})
    seen = _fractions(stream)
    assert [f for _, f in seen] == sorted(f for _, f in seen) and seen[-1][1] == 1.0
    at = {(s, f) for s, f in seen}
    start_b, end_b = min(f for s, f in at if s == "b"), max(f for s, f in at if s == "b")
    start_c, end_c = min(f for s, f in at if s == "c"), max(f for s, f in at if s == "c")
    assert start_b == pytest.approx(0.25, abs=1e-4) and end_b == pytest.approx(start_c, abs=1e-4)
    assert (end_b - start_b) == pytest.approx(6 * (end_c - start_c), abs=1e-3)   # events round to 1e-4
    assert end_c == pytest.approx(1.0)


def test_only_stages_still_to_come_can_be_replanned():
    progress = Progress("none", stages=(("a", 1.0), ("b", 1.0)))
    progress.stage("b")
    with pytest.raises(ValueError, match="not after stage 'b'"):
        progress.replan({"a": 2.0})
