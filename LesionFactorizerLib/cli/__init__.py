"""The ``lesion-factorizer`` command line.

Each sub-command lives in its own module in this package and exposes ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; they are discovered here, so adding a command
touches no shared file. Command modules import torch lazily inside ``run`` so that ``--help`` and
torch-free commands stay fast.

Only the command being run gets its options (``add_arguments``): the training commands' options
come from ``LesionFactorizerLib.training``, which the Slicer extension does not ship (training
imports the library, never the reverse), so ``segment`` must not need it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from LesionFactorizerLib import __version__
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.processmemory import configure_process_memory


def _command_modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            yield module


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


def _set_threads(n: int) -> None:
    """Before torch starts its thread pools (and for subprocesses such as the training workers)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


class _Parser(argparse.ArgumentParser):
    """A usage mistake gets the same single ``error:`` line as any other bad input (argparse would
    print the whole usage first), naming where the full usage is."""

    last_error = ""

    def error(self, message: str):
        _Parser.last_error = f"{message} (see '{self.prog} --help')"
        self.exit(2, f"error: {_Parser.last_error}\n")


def _requested_command(argv: list[str]) -> str | None:
    """The sub-command named on a command line (the first word that is not an option)."""
    words = iter(argv)
    for word in words:
        if word == "--threads":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _add_command_arguments(module, parser: argparse.ArgumentParser) -> None:
    try:
        module.add_arguments(parser)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("LesionFactorizerLib.training"):
            raise
        # The Slicer extension ships the inference library only.
        parser.set_defaults(_run=_training_missing)


def _training_missing(args: argparse.Namespace) -> int:
    raise UserError(f"'{args.command}' needs the training package, which this installation does not include; "
                    f"install the library with pip: pip install \"lesion-factorizer[training]\"")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that sub-command gets its options (see the module docstring)."""
    parser = _Parser(
        prog="lesion-factorizer",
        description="Brain-lesion segmentation (tumor, stroke, new MS lesions) with interpretable "
        "Factorizer networks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU threads for torch (default: one per core). On a machine shared with other "
                        "jobs fewer threads are often faster, e.g. --threads 1")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        p.set_defaults(_run=module.run)
        if command is None or command == module.NAME:
            _add_command_arguments(module, p)
    return parser


def _utf8_pipes() -> None:
    """Machine readers (the Slicer worker, ``--progress jsonl`` consumers) decode our pipes as
    UTF-8 whatever the locale; a terminal keeps its own encoding."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and not stream.isatty():
            stream.reconfigure(encoding="utf-8", errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    # Our own processes (CLI, Slicer worker) reuse memory for large tensors instead of faulting in
    # fresh pages for every feature map; only effective before torch is imported, hence first here
    # (the command modules import torch inside ``run``), never at import (see processmemory).
    configure_process_memory()
    # Idle OpenMP threads sleep instead of spinning: on a shared machine spinning steals the cores
    # the other threads (ours and other programs') need. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _utf8_pipes()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_requested_command(argv) or "")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 2 and _Parser.last_error:
            from LesionFactorizerLib.pipeline.progress import report_usage_error

            report_usage_error(argv, _Parser.last_error)
        raise
    if args.threads:
        _set_threads(args.threads)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
