"""Model cards for the model selector.

Finding, verifying and importing model files is the library's job
(``LesionFactorizerLib.modelfile``: torch-free, never unpickles); this file only turns a model's
metadata into what the selector shows — title, description, training data, licence, expected time,
inputs — and keeps damaged files visible as problems instead of hiding them.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LesionFactorizerLib import modelfile


@dataclass(frozen=True)
class ModelCard:
    name: str
    path: Path
    task: str
    source: str  # "bundled" or "user"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def _get(self, *keys: str) -> Any:
        for key in keys:
            node: Any = self.metadata
            for part in key.split("."):
                node = node.get(part) if isinstance(node, Mapping) else None
            if node not in (None, "", [], {}):
                return node
        return None

    @property
    def title(self) -> str:
        return str(self._get("title", "name") or self.name)

    @property
    def description(self) -> str:
        return str(self._get("description") or "")

    @property
    def license(self) -> str:
        return str(self._get("license", "licence") or "not stated")

    @property
    def training_data(self) -> str:
        """One readable line: the data set (its layout and folder name), steps and validation Dice."""
        value = self._get("training.dataset", "training.data", "training.description", "training_data")
        if isinstance(value, Mapping):  # the training config's data section: {"format": ..., "root": ...}
            layout, root = value.get("format"), value.get("root")
            value = " ".join(filter(None, [f"{layout} layout" if layout else "",
                                           f"'{Path(str(root)).name}'" if root else ""]))
        parts = [str(value)] if value else []
        steps, dice = self._get("training.steps"), self._get("training.validation.best.val/dice")
        if isinstance(steps, int):
            parts.append(f"{steps} training steps")
        if isinstance(dice, (int, float)):
            parts.append(f"validation Dice {dice:.2f}")
        return ", ".join(parts) or "not stated"

    @property
    def inputs(self) -> list[str]:
        value = self._get("inputs")
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def architecture(self) -> str:
        return str(self._get("architecture.name") or "")

    @property
    def has_components(self) -> bool:
        return "factorizer" in self.architecture.lower()

    def expected_time(self, measured_s: float | None = None) -> str:
        """Times recorded in the model file, else the last run on this computer, else when it will be known."""
        cpu = self._get("timing.cpu_s", "benchmark.cpu_s", "training.timing.cpu_s")
        gpu = self._get("timing.gpu_s", "benchmark.gpu_s", "training.timing.gpu_s")
        parts = []
        if isinstance(cpu, (int, float)):
            parts.append(f"CPU ≈ {cpu:.0f} s")
        if isinstance(gpu, (int, float)):
            parts.append(f"GPU ≈ {gpu:.0f} s")
        if not parts and measured_s is not None:
            parts.append(f"≈ {measured_s:.0f} s (last run on this computer)")
        return ", ".join(parts) or "shown after the first run on this computer"

    def html(self, measuredSeconds: float | None = None) -> str:
        """The model card shown under the model selector (all text escaped)."""
        e = html.escape
        rows = [
            ("Task", self.task), ("Architecture", self.architecture or "unknown"),
            ("Inputs", ", ".join(self.inputs) or "as the task"), ("Training data", self.training_data),
            ("Licence", self.license), ("Expected time", self.expected_time(measuredSeconds)),
            ("NMF components", "yes" if self.has_components else "no (not a Factorizer)"),
            ("File", f"{self.path.name} ({self.source})"),
        ]
        table = "".join(f"<tr><td><b>{e(k)}</b>&nbsp;</td><td>{e(str(v))}</td></tr>" for k, v in rows)
        return f"<p><b>{e(self.title)}</b></p><p>{e(self.description)}</p><table>{table}</table>"


def _card(entry: modelfile.ModelEntry) -> ModelCard:
    meta = entry.metadata or {}
    return ModelCard(name=entry.name, path=Path(entry.path), task=str(meta.get("task", "")),
                     source=entry.source, metadata=meta)


def list_cards(task: str | None = None, errors: list[str] | None = None) -> list[ModelCard]:
    """Cards of the models on the library's search path for ``task``.

    Damaged files are not offered but described in ``errors`` (one line each) so the user learns
    why a model they copied is missing.
    """
    cards, seen = [], set()
    for entry in modelfile.list_models(None):
        if entry.problem:
            if errors is not None:
                errors.append(f"{Path(entry.path).name}: {entry.problem}")
            continue
        card = _card(entry)
        if (task is None or card.task == task) and card.name not in seen:  # user folders come first
            seen.add(card.name)
            cards.append(card)
    return cards


def import_model(source: str | os.PathLike, overwrite: bool = False) -> ModelCard:
    """Verify a model file and copy it into the user model folder; its card."""
    source = Path(source)
    if source.suffix != modelfile.MODEL_SUFFIX:
        raise ValueError(f"{source.name} is not a model file; choose a {modelfile.MODEL_SUFFIX} file.")
    path = modelfile.import_model(source, overwrite=overwrite)
    return ModelCard(name=path.stem, path=path, task=str(modelfile.read_metadata(path).get("task", "")),
                     source="user", metadata=modelfile.read_metadata(path))
