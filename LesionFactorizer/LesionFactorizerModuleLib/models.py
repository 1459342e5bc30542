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
from dataclasses import dataclass
from pathlib import Path

from LesionFactorizerLib import modelfile
from LesionFactorizerLib.core.spec import ModelSpec


@dataclass(frozen=True)
class ModelCard:
    """What the selector shows of one model file, read from its parsed metadata (``spec``)."""

    name: str
    path: Path
    source: str  # "bundled" or "user"
    spec: ModelSpec

    @property
    def task(self) -> str:
        return self.spec.task.name

    @property
    def title(self) -> str:
        return self.spec.provenance.name or self.name

    @property
    def description(self) -> str:
        return self.spec.provenance.description

    @property
    def license(self) -> str:
        return self.spec.provenance.license or "not stated"

    @property
    def training_data(self) -> str:
        """One readable line: the data set (its layout and folder name), steps and validation Dice.

        The training record is free-form in the model file (whatever the training run wrote), so
        only the fields our trainer writes are shown, each when present and of the right type."""
        training = self.spec.provenance.training
        dataset = training.get("dataset")
        if isinstance(dataset, Mapping):  # the training config's data section: {"format": ..., "root": ...}
            layout, root = dataset.get("format"), dataset.get("root")
            dataset = " ".join(filter(None, [f"{layout} layout" if layout else "",
                                             f"'{Path(str(root)).name}'" if root else ""]))
        parts = [str(dataset)] if dataset else []
        steps = training.get("steps")
        best = (training.get("validation") or {}).get("best") or {}
        dice = best.get("val/dice") if isinstance(best, Mapping) else None
        if isinstance(steps, int):
            parts.append(f"{steps} training steps")
        if isinstance(dice, (int, float)):
            parts.append(f"validation Dice {dice:.2f}")
        return ", ".join(parts) or "not stated"

    @property
    def inputs(self) -> list[str]:
        return list(self.spec.inputs)

    @property
    def architecture(self) -> str:
        return self.spec.architecture.name

    @property
    def has_components(self) -> bool:
        return "factorizer" in self.architecture.lower()

    @staticmethod
    def expected_time(measured_s: float | None = None) -> str:
        """The last run's time on this computer, else when it will be known (model files record no
        timings: they depend on the computer)."""
        if measured_s is not None:
            return f"≈ {measured_s:.0f} s (last run on this computer)"
        return "shown after the first run on this computer"

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
        card = ModelCard(entry.name, Path(entry.path), entry.source, entry.spec)
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
    return ModelCard(path.stem, path, "user", modelfile.read_spec(path))
