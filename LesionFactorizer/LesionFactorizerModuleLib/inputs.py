"""Matching scene volumes to a task's inputs, and explaining what is missing.

The name patterns and the "only unambiguous matches" rule belong to the task definitions
(``LesionFactorizerLib.core.tasks.match_inputs``); this file applies them to Slicer volume names, keeps
what the user already chose, and turns the state of the selectors into the text shown next to the
Segment button (missing or duplicated inputs — as text, not only as a tooltip).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from typing import Any

from LesionFactorizerLib.core.tasks import Task, match_inputs


def assign_inputs(task: Task, volumes: Mapping[Hashable, str],
                  keep: Mapping[str, Hashable | None] | None = None) -> dict[str, Hashable | None]:
    """Choose a volume for every input of ``task``.

    ``volumes`` maps a volume key (the node ID in Slicer) to its name. Choices in ``keep`` that
    still exist stay; the other inputs get the volume whose name matches only that input, if
    exactly one does; each volume is used at most once; everything else stays None.
    """
    keep = dict(keep or {})
    result: dict[str, Hashable | None] = {spec.name: None for spec in task.inputs}
    used: set[Hashable] = set()
    for name in result:
        key = keep.get(name)
        if key is not None and key in volumes and key not in used:
            result[name] = key
            used.add(key)
    # Names can repeat in a Slicer scene; a repeated name is ambiguous, so it is not offered.
    counts = Counter(volumes.values())
    by_name = {name: key for key, name in volumes.items() if counts[name] == 1 and key not in used}
    for input_name, volume_name in match_inputs(by_name, task).items():
        if result.get(input_name) is None:
            result[input_name] = by_name[volume_name]
            used.add(by_name[volume_name])
    return result


def input_problems(task: Task, assignment: Mapping[str, Hashable | None]) -> dict[str, str]:
    """Per input, why it cannot be used as chosen (empty dict = ready to run)."""
    problems: dict[str, str] = {}
    first_user: dict[Hashable, str] = {}
    for spec in task.inputs:
        key = assignment.get(spec.name)
        if key is None:
            if not spec.optional:
                problems[spec.name] = "missing: select a volume"
            continue
        if key in first_user:
            problems[spec.name] = f"same volume as {task.input(first_user[key]).title}"
        else:
            first_user[key] = spec.name
    return problems


def problems_summary(task: Task, problems: Mapping[str, str]) -> str:
    """One sentence for the status line next to the Segment button."""
    if not problems:
        return ""
    missing = [task.input(n).title for n, p in problems.items() if p.startswith("missing")]
    duplicated = [f"{task.input(n).title} ({p})" for n, p in problems.items() if not p.startswith("missing")]
    parts = []
    if missing:
        parts.append("Select " + ", ".join(missing) + ".")
    if duplicated:
        parts.append("Each input needs its own volume: " + ", ".join(duplicated) + ".")
    return " ".join(parts)


def input_label(spec: Any, problem: str | None) -> str:
    """Label text in front of an input selector, with a visible mark when something is wrong."""
    title = spec.title + (" (optional)" if spec.optional else "")
    return f"{title}: ⚠ {problem}" if problem else f"{title}:"


def transformed_names(nodes) -> list[str]:
    """Names of the volume nodes (any objects with Slicer's node methods) under a parent transform."""
    return [node.GetName() for node in nodes if node is not None and node.GetParentTransformNode() is not None]


def transformed_problem(node_names: list[str]) -> str:
    """Why volumes under a parent transform are refused, or "" when none are. The worker would read
    them hardened, but the lesion navigator writes the hidden and rejected lesions through the
    untransformed reference grid, so the segmentation would no longer match what was segmented."""
    if not node_names:
        return ""
    return (f"{', '.join(repr(n) for n in node_names)} {'is' if len(node_names) == 1 else 'are'} under a transform: "
            f"harden it first (Data module: right-click the volume, 'Harden transform') or remove the transform.")
