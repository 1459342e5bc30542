"""The networks a model file may name (``ARCHITECTURES``) and one builder; the named presets are
data in :mod:`LesionFactorizerLib.core.network_presets`.

A model is described by plain data — an architecture name plus keyword arguments — so it can be
stored in a model file's metadata and rebuilt exactly::

    model = build_model("swin-factorizer-brats", in_channels=2)
    model.config   # {"architecture": "factorizer", "kwargs": {...}}
    same = build_architecture(**model.config)
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from torch import nn

from LesionFactorizerLib.nn.factorizer import Factorizer, plain_forward
from LesionFactorizerLib.nn.lowrank import ResUNet8
from LesionFactorizerLib.nn.monai_baselines import dynunet, swin_unetr, unetr
from LesionFactorizerLib.nn.performer import Performer
from LesionFactorizerLib.nn.unet import UNet
from LesionFactorizerLib.core.network_presets import PRESETS


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "factorizer": Factorizer,
    "unet": UNet,
    "resunet8": ResUNet8,
    "performer": Performer,
    "dynunet": dynunet,          # the MONAI baselines import MONAI when built
    "unetr": unetr,
    "swin-unetr": swin_unetr,
}


def build_architecture(architecture: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build ``ARCHITECTURES[architecture](**kwargs)`` and record the config on the module."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    kwargs = copy.deepcopy(dict(kwargs))
    model = ARCHITECTURES[architecture](**kwargs)
    model.config = {"architecture": architecture, "kwargs": _plain(kwargs)}
    return model


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build preset ``name`` with keyword overrides, e.g. ``in_channels=2`` to re-target it."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    return build_architecture(preset.architecture, {**preset.kwargs, **overrides})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs by ``torch.utils.flop_counter`` (2 per multiply-add, the thesis convention),
    of the plain forward (the memory-saving inference path trades extra FLOPs for memory traffic).

    Runs on the meta device, so no memory is allocated for activations."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), plain_forward(meta):   # not the folded inference path's FLOPs
        meta(torch.empty(input_shape, device="meta"))
    return counter.get_total_flops()


def preset_summary(name: str, flops: bool = True) -> dict[str, Any]:
    preset = PRESETS[name]
    model = build_model(name)
    k = preset.kwargs
    return {
        "name": name,
        "architecture": preset.architecture,
        "in_channels": k["in_channels"],
        "out_channels": k["out_channels"],
        "patch_size": preset.patch_size,
        "parameters": count_parameters(model),
        "gflops": count_flops(model, (1, k["in_channels"], *preset.patch_size)) / 1e9 if flops else None,
        "thesis_parameters_m": preset.thesis[0] if preset.thesis else None,
        "thesis_gflops": preset.thesis[1] if preset.thesis else None,
        "description": preset.description,
    }


def _plain(value: Any) -> Any:
    """JSON-friendly copy (tuples → lists) so configs survive a metadata round trip unchanged."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
