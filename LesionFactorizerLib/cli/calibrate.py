"""``lesion-factorizer calibrate``: measure the inference backends on one window batch of a model and
record the fastest that matches eager, which ``--backend auto`` then uses (``pipeline/backends.py``)."""

from __future__ import annotations

import argparse
import json

NAME = "calibrate"
HELP = ("measure eager, torch.compile and ONNX Runtime on one window batch of a model and record the fastest "
        "(that matches eager) for --backend auto; threads: the global --threads")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name, .safetensors path, or a preset name (random weights)")
    parser.add_argument("--window", type=int, nargs=3, metavar=("D", "H", "W"), help="default: the model's patch size")
    parser.add_argument("--sw-batch-size", type=int,
                        help="windows per batch (default: what `segment` chooses for this window and device)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)


def run(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.pipeline.backends import calibrate
    from LesionFactorizerLib.pipeline.inference import default_sw_batch_size, resolve_device
    from LesionFactorizerLib.presets import PRESETS, build_model

    if args.model in PRESETS:
        model, patch = build_model(args.model), PRESETS[args.model].patch_size
    else:
        from LesionFactorizerLib.modelfile import load_model_file

        loaded = load_model_file(args.model)
        model, patch = loaded.model, tuple(reversed(loaded.spec.preprocessing.patch_size))
    cin = model.config["kwargs"]["in_channels"]
    window = tuple(args.window or patch)
    batch = args.sw_batch_size or default_sw_batch_size(window, cin, resolve_device(args.device))
    print(json.dumps(calibrate(model, (batch, cin, *window), args.device, repeats=args.repeats), indent=1))
    return 0
