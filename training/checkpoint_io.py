"""Pickle-free training checkpoints: Lightning's checkpoint dict stored as one safetensors file.

Lightning normally ``torch.save``s (pickles) its checkpoints, and resuming unpickles them — which
can run arbitrary code from a tampered file. This plug-in stores every tensor in the safetensors
tensor table and the rest of the structure (ints, floats, strings, lists, tuples, dicts with any
scalar keys) as JSON in the file's metadata, with tensors replaced by references. Anything else
in a checkpoint is refused with a clear error instead of being pickled.

Files are named ``*.ckpt.safetensors`` so they are not mistaken for model files (those carry a
model-file metadata document; see ``export.py``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from safetensors import safe_open
from safetensors.torch import save_file

from LesionFactorizerLib.core.errors import UserError

FORMAT = "lesionfactorizer-training-checkpoint/1"
SUFFIX = ".ckpt.safetensors"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalar
        return _encode(obj.item(), tensors, path)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"checkpoint key {k!r} at {path} is not a plain value")
            items.append([k, _encode(v, tensors, f"{path}.{k}")])
        return {"__items__": items}
    raise TypeError(f"checkpoint entry {path} of type {type(obj).__name__} cannot be stored without pickle")


def _decode(obj: Any, tensors) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors(obj["__tensor__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        raise ValueError("malformed checkpoint structure")
    return obj


def save_checkpoint_file(checkpoint: dict, path: str | Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(checkpoint, tensors, "checkpoint")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "structure": json.dumps(structure)})
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written "last" checkpoint
    except BaseException:
        tmp.unlink(missing_ok=True)   # e.g. disk full: no stray partial file next to the checkpoints
        raise


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    device = "cpu" if map_location is None or callable(map_location) or isinstance(map_location, dict) \
        else str(map_location)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise UserError(f"{path} is not a LesionFactorizer training checkpoint "
                                f"(expected a {SUFFIX} file written by 'lesion-factorizer train')")
            structure = json.loads(meta["structure"])
            return _decode(structure, f.get_tensor)
    except UserError:
        raise
    except Exception as exc:  # truncated / corrupt file: one clear line, no traceback
        raise UserError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}"[:300]) from None


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning plug-in: ``Trainer(plugins=[SafetensorsCheckpointIO()])``."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint_file(path, map_location)

    def remove_checkpoint(self, path) -> None:
        p = Path(path)
        if p.is_file():
            p.unlink()
