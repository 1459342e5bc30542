"""Command-line options shared by ``train`` and ``cv``, mapped onto config overrides."""

from __future__ import annotations

import argparse

import yaml

from LesionFactorizerLib.core.errors import UserError

from .config import yaml_load


class ListConfigs(argparse.Action):
    """``--list-configs``: print the bundled experiments and exit (like ``--version``, so the
    otherwise required CONFIG argument is not needed)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        from .config import bundled_configs

        for name, task, preset, description in bundled_configs():
            sys.stdout.write(f"{name:28s} {task:7s} {preset:28s} {description}\n")
        parser.exit()


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file, or a bundled experiment name "
                        "(e.g. swin-factorizer-brats; list them with --list-configs)")
    parser.add_argument("--list-configs", action=ListConfigs,
                        help="list the bundled experiment configs (name, task, model preset) and exit")
    parser.add_argument("--data-root", help="data-set folder or datalist (overrides data.root)")
    parser.add_argument("--pack", help="train from this pack of preprocessed cases (made by "
                        "'python -m LesionFactorizerLib.training.packed'; overrides data.pack)")
    parser.add_argument("--output-dir", help="where runs are written (default: trainer.output_dir, 'runs')")
    parser.add_argument("--devices", help="devices per node: a number, or 'auto' (Lightning)")
    parser.add_argument("--num-nodes", type=int, help="number of nodes for multi-node DDP")
    parser.add_argument("--strategy", help="Lightning strategy, e.g. ddp (default auto)")
    parser.add_argument("--accelerator", help="auto | cpu | gpu | mps")
    parser.add_argument("--precision", help="auto | 32-true | bf16-mixed | 16-mixed")
    parser.add_argument("--max-steps", type=int, help="total optimiser steps")
    parser.add_argument("--val-every", type=int, help="validate every N steps")
    parser.add_argument("--batch-size", type=int, help="patches per device and step")
    parser.add_argument("--workers", type=int, help="data-loader worker processes per device")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config value, e.g. --set optim.lr=3e-4 --set data.patch_size=[96,96,96]")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. for log files)")


def overrides_from(args: argparse.Namespace) -> dict:
    o: dict = {}

    def put(path: str, value) -> None:
        node = o
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {path}: '{k}' is not a section")
        node[keys[-1]] = value

    simple = {"data_root": "data.root", "pack": "data.pack", "output_dir": "trainer.output_dir",
              "num_nodes": "trainer.num_nodes", "strategy": "trainer.strategy", "accelerator": "trainer.accelerator",
              "precision": "trainer.precision", "max_steps": "trainer.max_steps",
              "val_every": "trainer.val_every", "batch_size": "data.batch_size", "workers": "data.num_workers"}
    for attr, path in simple.items():
        value = getattr(args, attr, None)
        if value is not None:
            put(path, value)
    if getattr(args, "devices", None) is not None:
        put("trainer.devices", int(args.devices) if str(args.devices).isdigit() else args.devices)
    for item in getattr(args, "set", []):
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
        put(key.strip(), value)
    return o
