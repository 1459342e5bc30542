"""``lesion-factorizer serve``: segment for other computers over HTTP (see LesionFactorizerLib/serve)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.serve.client import TOKEN_ENV

NAME = "serve"
HELP = "run a segmentation server (HTTP API) for Slicer and `batch --server` on other computers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from LesionFactorizerLib.cli.batch import _devices

    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer "
                        "only); any other address needs a token, and TLS from a reverse proxy (see README)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--token-file", metavar="FILE", help="access tokens, one a line (one per user or "
                        f"workstation: limits are per token); default: ${TOKEN_ENV}")
    parser.add_argument("--devices", type=_devices, default=["cpu"], metavar="D,D,...",
                        help="one worker per device: GPU indices or cpu (default cpu), e.g. 0,1")
    parser.add_argument("--models", metavar="NAME,...", help="offer only these installed models (default: all)")
    parser.add_argument("--work-dir", metavar="DIR", help="where jobs keep their files (default: a new temporary "
                        "folder, removed at exit)")
    parser.add_argument("--max-upload-mb", type=float, default=1024, help="largest image upload (default 1024)")
    parser.add_argument("--max-voxels", type=int, default=100_000_000, help="largest image, in voxels, read from "
                        "its header before the upload is stored (default 100 million)")
    parser.add_argument("--max-jobs-per-client", type=int, default=4, help="unfinished jobs per client (default 4)")
    parser.add_argument("--requests-per-minute", type=int, default=600, help="per client (default 600)")
    parser.add_argument("--retention-min", type=float, default=60, help="finished jobs not deleted by their client "
                        "are deleted after this many minutes (default 60)")


def read_tokens(token_file: str | None) -> list[str]:
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read the token file {token_file} ({exc}); check the path") from None
        tokens = [t.strip() for t in text.splitlines() if t.strip() and not t.strip().startswith("#")]
        if not tokens:
            raise UserError(f"the token file {token_file} holds no token; write one per line")
    else:
        tokens = [os.environ[TOKEN_ENV].strip()] if os.environ.get(TOKEN_ENV, "").strip() else []
    short = [t for t in tokens if len(t) < 16]
    if short:
        raise UserError("a token must be at least 16 characters (e.g. python -c \"import secrets; "
                        "print(secrets.token_urlsafe(32))\")")
    return tokens


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    tokens = read_tokens(args.token_file)
    if not tokens and not _loopback(args.host):
        raise UserError(f"--host {args.host} lets other computers in: give --token-file FILE (or ${TOKEN_ENV}); "
                        "without a token the server listens on 127.0.0.1 only")
    try:
        import uvicorn

        from LesionFactorizerLib.serve.app import Config, create_app
    except ModuleNotFoundError as exc:
        raise UserError(f"serve needs {exc.name}: pip install \"lesion-factorizer[serve]\"") from None
    from LesionFactorizerLib.modelfile import list_models

    offered = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    unknown = sorted(set(offered) - {e.name for e in list_models() if not e.problem})
    if unknown:
        raise UserError(f"--models: no installed model named {', '.join(unknown)}; see `lesion-factorizer models list`")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="lesion-factorizer-serve-"))
    config = Config(work_dir=work, devices=args.devices, tokens=tokens, models=offered,
                    max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_voxels=args.max_voxels,
                    max_jobs_per_client=args.max_jobs_per_client, requests_per_minute=args.requests_per_minute,
                    retention_s=args.retention_min * 60)
    app = create_app(config)
    print(f"serving on http://{args.host}:{args.port} (devices {','.join(args.devices)}; "
          f"{'token required' if tokens else 'no token: this computer only'}; jobs in {work})", file=sys.stderr,
          flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")).run()
    finally:
        app.state.manager.shutdown()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0
