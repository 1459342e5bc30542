"""``lesion-factorizer models …``: model presets and model files."""

from __future__ import annotations

import argparse

from LesionFactorizerLib.catalog import DEFAULT_TIMEOUT_S, ENV_CATALOG, STATUSES

NAME = "models"
HELP = "list, inspect, verify, import, download and delete model files; print the architecture presets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = sub.add_parser("presets", help="table of architecture presets: parameters and GFLOPs at one patch, "
                       "beside the thesis's numbers where it reports them")
    p.add_argument("names", nargs="*", metavar="PRESET", help="only these presets (default: all)")
    p.add_argument("--no-flops", action="store_true", help="skip the (slow) FLOP count")
    p.set_defaults(_models_run=_presets)

    p = sub.add_parser("list", help="installed model files (bundled and user folder)")
    p.add_argument("--task", help="only models for this task")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(_models_run=_list)

    p = sub.add_parser("info", help="a model file's metadata")
    p.add_argument("model", metavar="NAME|PATH")
    p.add_argument("--json", action="store_true", help="print the whole metadata document as JSON")
    p.set_defaults(_models_run=_info)

    p = sub.add_parser("verify", help="check a model file: header, metadata, checksum, weights vs architecture")
    p.add_argument("model", nargs="+", metavar="NAME|PATH")
    p.add_argument("--quick", action="store_true", help="skip building the network (no torch)")
    p.set_defaults(_models_run=_verify)

    p = sub.add_parser("import", help="verify a .safetensors model file and copy it into the user model folder")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", help="name to install it under (default: the file name)")
    p.add_argument("--overwrite", action="store_true", help="replace an installed model of the same name")
    p.set_defaults(_models_run=_import)

    catalog_help = (f"model catalogue: URL or file (default: ${ENV_CATALOG}, else the catalogue bundled with "
                    "the package)")
    p = sub.add_parser("available", help="the models of a catalogue, and which are installed")
    p.add_argument("--catalog", metavar="URL|FILE", help=catalog_help)
    p.add_argument("--task", help="only models for this task")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(_models_run=_available)

    p = sub.add_parser("download", help="download a catalogue model into the user model folder, checked "
                       "(size, SHA-256, model file) before it is installed")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--catalog", metavar="URL|FILE", help=catalog_help)
    p.add_argument("--overwrite", action="store_true", help="replace a different installed file of the same name")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="give up when the server sends nothing for S seconds (default %(default)g)")
    p.add_argument("--progress", choices=["bar", "jsonl", "none"], default="bar",
                   help="progress display: bar (stderr), jsonl (JSON events on stdout, as segment's) or none")
    p.set_defaults(_models_run=_download)

    p = sub.add_parser("delete", help="remove a downloaded or imported model (bundled models stay)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(_models_run=_delete)

    p = sub.add_parser("catalog-entry", help="print the catalogue entry of a model file (to publish it)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--url", required=True, help="where the file will be served (absolute, or relative to the "
                   "catalogue)")
    p.add_argument("--status", required=True, choices=STATUSES, help="demo, research or clinical")
    p.add_argument("--version", default="", help="the model's version (default: the file's creation time)")
    p.add_argument("--sample-url", default="", help="a sample case to try it on (default: the bundled sample "
                   "case of its task)")
    p.add_argument("--name", default="", help="name to publish it under (default: the file name)")
    p.set_defaults(_models_run=_catalog_entry)


def run(args: argparse.Namespace) -> int:
    return args._models_run(args)


def _presets(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.presets import PRESETS, preset_summary

    unknown = [n for n in args.names if n not in PRESETS]
    if unknown:
        raise UserError(f"unknown preset(s) {', '.join(unknown)}; presets: {', '.join(PRESETS)}")
    print(f"{'preset':<28} {'architecture':<12} {'in':>3} {'out':>3} {'patch':>9} {'parameters':>12} {'GFLOPs':>9}"
          f"  {'thesis: M params':>16} {'GFLOPs':>8}")
    for name in args.names or PRESETS:
        s = preset_summary(name, flops=not args.no_flops)
        gflops = "-" if s["gflops"] is None else f"{s['gflops']:.1f}"
        patch = "x".join(str(p) for p in s["patch_size"][:1]) + "^3"
        thesis = "" if s["thesis_parameters_m"] is None else f"  {s['thesis_parameters_m']:>16.1f} {s['thesis_gflops']:>8.1f}"
        print(f"{name:<28} {s['architecture']:<12} {s['in_channels']:>3} {s['out_channels']:>3} "
              f"{patch:>9} {s['parameters']:>12d} {gflops:>9}{thesis}")
    return 0


def _list(args: argparse.Namespace) -> int:
    import json

    from LesionFactorizerLib.modelfile import list_models, model_search_path

    entries = list_models(args.task)
    if args.json:
        print(json.dumps([{"name": e.name, "path": str(e.path), "source": e.source,
                           "task": (e.metadata or {}).get("task"), "description": (e.metadata or {}).get("description"),
                           "problem": e.problem or None} for e in entries], indent=2))
        return 0
    if not entries:
        print("no model files found; searched: " + ", ".join(str(d) for _, d in model_search_path()))
        return 0
    print(f"{'name':<32} {'task':<8} {'architecture':<16} {'source':<8} description")
    for e in entries:
        if e.problem:
            print(f"{e.name:<32} {'?':<8} {'?':<16} {e.source:<8} DAMAGED: {e.problem}")
            continue
        m = e.metadata
        print(f"{e.name:<32} {m['task']:<8} {m['architecture']['name']:<16} {e.source:<8} {m.get('description', '')}")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from LesionFactorizerLib.modelfile import file_sha256, find_model, read_metadata

    path = find_model(args.model)
    meta = read_metadata(path)
    if args.json:
        print(json.dumps({"path": str(path), "sha256": file_sha256(path), "metadata": meta}, indent=2))
        return 0
    pre = meta["preprocessing"]
    print(f"name:          {meta.get('name') or path.stem}")
    print(f"path:          {path}")
    print(f"task:          {meta['task']}")
    print(f"inputs:        {', '.join(meta['inputs'])}")
    print(f"outputs:       {meta['outputs']['activation']}: {', '.join(meta['outputs']['channels'])}")
    print(f"architecture:  {meta['architecture']['name']} {json.dumps(meta['architecture']['kwargs'])}")
    print(f"spacing (mm):  {pre.get('spacing') or 'input spacing'}   patch: {pre['patch_size']}")
    print(f"weights:       {meta['weights'].get('dtype', '?')}, sha256 {meta['weights']['sha256'][:16]}…")
    print(f"licence:       {meta.get('license', '')}")
    print(f"description:   {meta.get('description', '')}")
    if meta.get("training"):
        print(f"training:      {json.dumps(meta['training'])}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.modelfile import find_model, verify_file, verify_model

    failed = 0
    for item in args.model:
        try:
            path = find_model(item)
            info = verify_file(path) if args.quick else verify_model(path)
        except UserError as exc:
            print(f"FAILED {item}: {exc}")
            failed += 1
            continue
        extra = f", {info['parameters']:,} parameters" if "parameters" in info else ""
        print(f"OK     {info['path']} (task {info['task']}, sha256 {info['sha256'][:16]}…{extra})")
    if failed:
        raise UserError(f"{failed} of {len(args.model)} model file(s) failed verification; see above")
    return 0


def _import(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.modelfile import import_model, verify_model

    verify_model(args.file)   # the full check, as `models verify` (import_model alone stays torch-free for Slicer)
    dest = import_model(args.file, name=args.name, overwrite=args.overwrite)
    print(f"imported {args.file} as {dest.stem} ({dest})")
    return 0


def _available(args: argparse.Namespace) -> int:
    import json

    from LesionFactorizerLib.catalog import installed, load_catalog

    catalog = load_catalog(args.catalog)
    rows = []
    for entry in catalog.models:
        if args.task and entry.task != args.task:
            continue
        state, path = installed(entry)
        rows.append((entry, state, path))
    if args.json:
        print(json.dumps({"catalog": catalog.url, "version": catalog.version, "models": [
            {"name": e.name, "task": e.task, "inputs": list(e.inputs), "version": e.version, "status": e.status,
             "size": e.size, "license": e.license, "url": e.url, "sha256": e.sha256, "description": e.description,
             "installed": state or None, "path": str(path) if path else None} for e, state, path in rows]}, indent=2))
        return 0
    print(f"catalogue {catalog.url} (version {catalog.version})")
    print(f"{'name':<28} {'task':<7} {'status':<9} {'version':<26} {'size':>9}  {'licence':<14} installed")
    for e, state, _ in rows:
        shown = {"other": "other file", "": "-"}.get(state, state)
        print(f"{e.name:<28} {e.task:<7} {e.status:<9} {e.version:<26} {e.size / 1e6:>6.1f} MB  {e.license:<14} "
              f"{shown}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.catalog import download, installed, load_catalog
    from LesionFactorizerLib.modelfile import user_model_dir
    from LesionFactorizerLib.pipeline.progress import Progress, terminate_cleanly

    terminate_cleanly()   # Slicer's Cancel sends SIGTERM: the temporary file must go too
    progress = Progress(args.progress, stages=(("download", 0.95), ("verify", 0.05)))
    with progress.errors_reported():
        entry = load_catalog(args.catalog, timeout=args.timeout).entry(args.name)
        progress.stage("download", f"{entry.name} from {entry.url}")
        state, path = installed(entry)
        if state == "bundled" or (state == "downloaded" and path.parent == user_model_dir()):
            message = f"{entry.name} {entry.version} is already installed ({path})"
        else:
            def report(done: int, total: int) -> None:
                if done == total:
                    progress.stage("verify", "checking the file")
                else:
                    progress.update(done / total, f"{done / 1e6:.1f} of {total / 1e6:.1f} MB")

            path = download(entry, progress=report, overwrite=args.overwrite, timeout=args.timeout)
            message = f"installed {entry.name} {entry.version} ({entry.status}, {entry.license}) as {path}"
    progress.done({"model": str(path), "name": entry.name, "sha256": entry.sha256}, message)
    if args.progress != "jsonl":
        print(message)
    return 0


def _delete(args: argparse.Namespace) -> int:
    from LesionFactorizerLib.catalog import delete

    print(f"deleted {delete(args.name)}")
    return 0


def _catalog_entry(args: argparse.Namespace) -> int:
    import json

    from LesionFactorizerLib.catalog import entry_for

    sample = {"url": args.sample_url} if args.sample_url else None
    print(json.dumps(entry_for(args.file, args.url, args.status, args.version, sample, args.name), indent=2))
    return 0
