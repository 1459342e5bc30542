"""Bundled sample cases, described for Slicer's Sample Data module.

The cases and their SHA-256 checksums are listed in ``Resources/SampleData/manifest.json``, written
by ``LesionFactorizerLib.phantoms.samples`` (the owner of that format). The manifest is read here
as plain JSON on purpose: importing the phantoms package would pull scipy into Slicer's GUI process
just to list three cases. Sample Data verifies each file against the recorded checksum when it
loads it, so a damaged installation is reported instead of silently segmenting a broken file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from LesionFactorizerLib.core.checksums import sha256
from LesionFactorizerLib.core.tasks import TASKS

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class SampleFile:
    input_name: str
    path: Path
    sha256: str

    @property
    def uri(self) -> str:
        return self.path.resolve().as_uri()


@dataclass(frozen=True)
class SampleCase:
    name: str  # Sample Data entry name, e.g. "LesionFactorizer tumor"
    task: str
    files: tuple[SampleFile, ...]
    thumbnail: Path | None

    def node_name(self, sample_file: SampleFile) -> str:
        # "<task>_<input>" is recognised by the task's input name patterns (auto-assignment)
        return f"{self.task}_{sample_file.input_name}"


def discover_sample_cases(sample_root: str | os.PathLike) -> list[SampleCase]:
    """The cases of ``sample_root/manifest.json``, inputs in the task's order (none if absent)."""
    root = Path(sample_root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return []
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    cases = []
    for task_name, entry in (manifest.get("cases") or {}).items():
        task = TASKS.get(task_name)
        if task is None:
            continue
        recorded = entry.get("sha256") or {}
        files = []
        for spec in task.inputs:
            rel = (entry.get("inputs") or {}).get(spec.name)
            if rel is None:
                if spec.optional:
                    continue
                raise ValueError(f"{manifest_path}: case {task_name} lacks its {spec.title} input.")
            path = root / rel
            files.append(SampleFile(spec.name, path, recorded.get(rel) or sha256(path)))
        thumbnail = root / f"{task_name}_thumbnail.png"
        cases.append(SampleCase(name=f"LesionFactorizer {task_name}", task=task_name, files=tuple(files),
                                thumbnail=thumbnail if thumbnail.is_file() else None))
    return cases
