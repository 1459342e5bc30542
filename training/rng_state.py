"""Every rank's random streams in the checkpoint, so that a resumed run continues the uninterrupted one.

The data draws need no saved state (``data.DrawSampler`` derives each from its number); what a
step itself draws — dropout, random initialisations — comes from the global generators of torch
(CPU and CUDA), numpy and Python. :class:`RngStates` stores them for every rank as one byte
tensor per rank (``checkpoint["rng_states"]``: a (ranks, bytes) uint8 tensor and the JSON layout
of a row), gathered from all ranks when a checkpoint is written, and puts each rank's own row
back when training starts from it. Validation runs inside a saved-and-restored copy of the
streams: a resumed run does not repeat the validation that came after its checkpoint, so the
training must not depend on what validation drew.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

KEY = "rng_states"


def _parts() -> list[tuple[str, np.ndarray]]:
    """This process's generator states as named byte arrays (fixed sizes on every rank)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    parts = [("torch", torch.get_rng_state().numpy()),
             ("numpy_key", np.asarray(key, np.uint32).view(np.uint8)),
             ("numpy_rest", np.array([pos, has_gauss], np.int64).view(np.uint8)),
             ("numpy_gauss", np.array([gauss], np.float64).view(np.uint8)),
             ("python_mt", np.asarray(mt, np.uint64).view(np.uint8)),
             ("python_gauss", np.array([np.nan if gauss_next is None else gauss_next], np.float64).view(np.uint8))]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        parts.append(("cuda", torch.cuda.get_rng_state().numpy()))
    return parts


def capture() -> tuple[torch.Tensor, list]:
    """(uint8 row, layout [[name, bytes], ...]) of this process's states."""
    parts = _parts()
    return torch.from_numpy(np.concatenate([b for _, b in parts]).copy()), [[n, int(b.size)] for n, b in parts]


def restore(row: torch.Tensor, layout: list) -> None:
    data, at, part = row.numpy(), 0, {}
    for name, size in layout:
        part[name] = data[at:at + size].copy()
        at += size
    torch.set_rng_state(torch.from_numpy(part["torch"]))
    pos, has_gauss = part["numpy_rest"].view(np.int64)
    np.random.set_state(("MT19937", part["numpy_key"].view(np.uint32), int(pos), int(has_gauss),
                         float(part["numpy_gauss"].view(np.float64)[0])))
    gauss = float(part["python_gauss"].view(np.float64)[0])
    random.setstate((3, tuple(int(v) for v in part["python_mt"].view(np.uint64)), None if np.isnan(gauss) else gauss))
    if "cuda" in part and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(part["cuda"]))


class RngStates(Callback):
    def __init__(self):
        self._pending: tuple[torch.Tensor, list] | None = None
        self._around_validation: tuple[torch.Tensor, list] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        row, layout = capture()
        # every rank writes its row; the rank that saves keeps them all (ranks share one layout)
        rows = trainer.strategy.all_gather(row) if trainer.world_size > 1 else row[None]
        checkpoint[KEY] = {"layout": layout, "ranks": rows.reshape(trainer.world_size, -1).cpu()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        import warnings

        saved = checkpoint.get(KEY)
        if saved is None:
            warnings.warn("the checkpoint holds no random-generator states (written by an older version): the "
                          "resumed run continues, but not exactly as an uninterrupted run would have")
        elif saved["ranks"].shape[0] != trainer.world_size:
            warnings.warn(f"the checkpoint's random states are of {saved['ranks'].shape[0]} rank(s) and this run has "
                          f"{trainer.world_size}: it continues, but not exactly as the saved run would have")
        else:
            self._pending = (saved["ranks"][trainer.global_rank], saved["layout"])

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning's own set-up (data loaders, sanity checks), right before the first step
        if self._pending is not None:
            restore(*self._pending)
            self._pending = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._around_validation = capture()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._around_validation is not None:
            restore(*self._around_validation)
            self._around_validation = None
