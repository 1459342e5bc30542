"""``batch --server URL``: a cohort's cases segmented on a ``lesion-factorizer serve`` machine.

Each case's input files are uploaded, segmented there with the batch's segment settings (model
names as the server knows them) and its result unpacked into the case's output folder, so the
summary, ``--resume`` and ``--shard`` work as for a local batch.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.reportspec import REPORT_NAME
from LesionFactorizerLib.serve.client import SERVER_DECIDES, TOKEN_ENV



def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL", help="segment on a `lesion-factorizer serve` machine (e.g. "
                        f"https://gpu.example:8765) instead of here; its token from --token-file or ${TOKEN_ENV}")
    parser.add_argument("--token-file", metavar="FILE", help="with --server: a file holding the access token")


def server_token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            return Path(args.token_file).read_text(encoding="utf-8").strip().splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise UserError(f"cannot read a token from {args.token_file} ({exc}); write the token on its first "
                            "line") from None
    return os.environ.get(TOKEN_ENV, "").strip()


class ServerCaseRunner:
    """The batch's case runner (same ``run`` as the local one), on the server."""

    def __init__(self, args: argparse.Namespace, task: str):
        from LesionFactorizerLib.core.settings import BY_NAME, SegmentSettings
        from LesionFactorizerLib.serve.client import Client

        if args.dicom_seg:
            raise UserError("--dicom-seg needs the DICOM series on the computer that segments; run it without "
                            "--server")
        self.client = Client(args.server, server_token(args))
        self.client.check()   # unreachable, refused token or another version: said once, before any case
        self.task, self.overwrite = task, args.overwrite
        values = SegmentSettings.from_args(args).values()
        self.settings = {k: v for k, v in values.items()
                         if k in BY_NAME and k not in SERVER_DECIDES and v not in (None, [], BY_NAME[k].default)}

    def run(self, case_id: str, inputs: dict[str, str], output: str, redo: bool) -> tuple[str, str, float]:
        t0 = time.monotonic()
        if (Path(output) / REPORT_NAME).exists() and not (self.overwrite or redo):
            return "failed", f"{output} already holds results; give --overwrite to replace them", 0.0
        try:
            self.client.run(self.task, inputs, self.settings, Path(output))
            return "done", "", time.monotonic() - t0
        except UserError as exc:
            return "failed", str(exc), time.monotonic() - t0
