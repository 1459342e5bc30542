"""``lesion-factorizer nmf-rank``: is rank R enough? The relative-error-vs-rank curve of NMF layers'
matrices and its Kneedle elbow (thesis 5.4), printed and plotted."""

from __future__ import annotations

import argparse

NAME = "nmf-rank"
HELP = ("relative NMF error vs rank and its Kneedle elbow (thesis 5.4), for chosen NMF layers of a Factorizer "
        "model on one case, or for a non-negative matrix file (.npy)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME|PATH", help="a Factorizer model file (with --input)")
    parser.add_argument("--input", "-i", action="append", default=[], metavar="NAME=PATH",
                        help="the case's input images, as for segment (with --model)")
    parser.add_argument("--layers", metavar="LAYER,...", help="NMF layers (default: all of the model's)")
    parser.add_argument("--matrix", metavar="FILE.npy", help="instead of a model: one non-negative (M, N) matrix "
                        "or a (B, M, N) stack, as a .npy file (never unpickled)")
    parser.add_argument("--max-rank", type=int, default=20, metavar="R", help="largest rank tried (default 20; "
                        "never beyond min(M, N), where the factorisation is exact)")
    parser.add_argument("--iters", type=int, default=200, metavar="T", help="HALS iterations per rank (default 200)")
    parser.add_argument("--plot", metavar="FILE.png", help="write the curves with their elbows here")


def _case_matrices(args: argparse.Namespace, layers: list[str] | None) -> dict:
    """Each chosen layer's matrices for the central window of the prepared case."""
    import torch

    from LesionFactorizerLib.cli.segment import parse_inputs
    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.modelfile import find_model, read_spec
    from LesionFactorizerLib.nn.rank_choice import layer_matrices
    from LesionFactorizerLib.pipeline.segment import Segmenter
    from LesionFactorizerLib.core.settings import SegmentSettings

    task = read_spec(find_model(args.model)).task
    inputs = parse_inputs(args.input, task)
    seg = Segmenter(SegmentSettings(task=task.name, models=[args.model], device="cpu"))
    warnings: list[str] = []
    seg.check_inputs(inputs, warnings)
    model = seg.models()[0].model
    if not hasattr(model, "nmf_layers"):
        raise UserError(f"model {args.model} is not a Factorizer: it has no NMF layers")
    prep, roi = seg.prepare(seg.read(inputs, warnings))
    array = torch.from_numpy(prep.array).float()
    start = [max(0, (s - r) // 2) for s, r in zip(array.shape[1:], roi)]
    window = array[(slice(None), *(slice(a, a + r) for a, r in zip(start, roi)))]
    print(f"{args.model}: central window {'x'.join(map(str, window.shape[1:]))} of the prepared case")
    return layer_matrices(model.eval(), window[None], layers or list(model.nmf_layers()))


def run(args: argparse.Namespace) -> int:
    import torch

    from LesionFactorizerLib.core.errors import UserError
    from LesionFactorizerLib.nn.rank_choice import (default_ranks, error_curve, kneedle_elbow, load_matrix_file,
                                                    plot_curves)
    from LesionFactorizerLib.core.settings import split_list

    if bool(args.matrix) == bool(args.model):
        raise UserError("give either --matrix FILE.npy, or --model with the case's --input images")
    if args.model and not args.input:
        raise UserError("--model needs the case's images: --input NAME=PATH for each input")
    if args.max_rank < 1 or args.iters < 1:
        raise UserError("--max-rank and --iters must be at least 1")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UserError(f"--plot {args.plot}: give a .png file name")
    if args.matrix:
        matrices = {args.matrix: torch.from_numpy(load_matrix_file(args.matrix).astype("float64"))}
    else:
        matrices = _case_matrices(args, split_list(args.layers))
    curves = {}
    for name, x in matrices.items():
        m, n = x.shape[-2:]
        ranks = default_ranks(m, n, args.max_rank)
        errors = error_curve(x, ranks, args.iters)
        count = x.shape[0] if x.dim() == 3 else 1
        curves[name] = {"ranks": ranks, "errors": errors, "elbow": kneedle_elbow(ranks, errors),
                        "shape": f"{count} × {m}×{n}"}
    for name, c in curves.items():
        elbow = c["elbow"] if c["elbow"] is not None else "none (too few ranks or no bend)"
        print(f"{name}: {c['shape']} matrices; Kneedle elbow at rank {elbow}")
        print("  rank  " + " ".join(f"{r:>7d}" for r in c["ranks"]))
        print("  error " + " ".join(f"{e:7.4f}" for e in c["errors"]))
    if args.plot:
        plot_curves(curves, args.plot)
        print(f"plot: {args.plot}")
    return 0
