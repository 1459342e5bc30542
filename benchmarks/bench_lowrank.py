"""The chapter-8 low-rank Res-U-Net, run as CP factors, against the dense Res-U-Net of equal width.

    .venv/bin/python benchmarks/bench_lowrank.py                  # F=60, 1×4×64³, 2 threads
    .venv/bin/python benchmarks/bench_lowrank.py --size 128 --repeats 2

Three forwards, interleaved, best of ``--repeats`` (eval, ``torch.inference_mode``): the dense
network (``resunet-brats2020``), the low-rank network with its kernels rebuilt as dense 3³ kernels
(how it trains), and the low-rank network as factors (how it now infers). Also checks that the
last two agree, and prints FLOPs (counted by torch) and FLOP/s.
"""

from __future__ import annotations

import argparse
import time

from LesionFactorizerLib.processmemory import configure_process_memory

MEMORY = configure_process_memory()  # before torch, as the CLI does: same allocator for all three

import torch

from LesionFactorizerLib.nn.lowrank import LowRankConv3d
from LesionFactorizerLib.presets import build_model, count_flops


def set_factored(model: torch.nn.Module, flag: bool) -> None:
    for layer in model.modules():
        if isinstance(layer, LowRankConv3d):
            layer.factored = flag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--features", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before", metavar="LOWRANK_PY",
                        help="an older nn/lowrank.py: its forward_factored is timed too (same run, same weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = build_model("resunet-brats2020", features=args.features).eval()
    lowrank = build_model("lowrank-resunet-brats2020", features=args.features).eval()
    shape = (1, 4, *(args.size,) * 3)
    x = torch.randn(shape)

    def low_kernel(inp):
        set_factored(lowrank, False)
        return lowrank(inp)

    def low_factors(inp):
        set_factored(lowrank, True)
        return lowrank(inp)

    runs = {"dense Res-U-Net": dense, "low-rank, dense kernels": low_kernel, "low-rank, CP factors": low_factors}
    if args.before:
        import importlib.util

        spec = importlib.util.spec_from_file_location("lowrank_before", args.before)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        current = LowRankConv3d.forward_factored

        def low_factors_before(inp):
            set_factored(lowrank, True)
            LowRankConv3d.forward_factored = old.LowRankConv3d.forward_factored
            try:
                return lowrank(inp)
            finally:
                LowRankConv3d.forward_factored = current

        runs["CP factors (before)"] = low_factors_before
    times = {k: [] for k in runs}
    cpu = {k: [] for k in runs}  # process CPU seconds: the work done, whatever else runs on the machine
    outs = {}
    with torch.inference_mode():
        for fn in runs.values():
            fn(x[..., :32, :32, :32])  # warm-up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                outs[name] = fn(x)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    diff = (outs["low-rank, CP factors"] - outs["low-rank, dense kernels"]).abs().max().item()
    set_factored(lowrank, False)
    flops = {"dense Res-U-Net": count_flops(dense, shape), "low-rank, dense kernels": count_flops(lowrank, shape)}
    set_factored(lowrank, True)
    flops["low-rank, CP factors"] = count_flops(lowrank, shape)
    flops["CP factors (before)"] = flops["low-rank, CP factors"]
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"input {shape}, F={args.features}, {args.threads} threads, best of {args.repeats}, load average {load:.1f}; "
          f"{MEMORY}")
    print(f"{'network':<26} {'best s':>8} {'CPU s':>7} {'GFLOP':>8} {'GFLOP/s':>8}")
    for name, ts in times.items():
        print(f"{name:<26} {min(ts):8.2f} {min(cpu[name]):7.2f} {flops[name] / 1e9:8.1f} {flops[name] / 1e9 / min(ts):8.1f}")
    best = min(times["low-rank, CP factors"])
    print(f"CP factors vs dense Res-U-Net: {min(times['dense Res-U-Net']) / best:.2f}x faster; "
          f"vs its own dense kernels: {min(times['low-rank, dense kernels']) / best:.2f}x; in CPU s vs dense: "
          f"{min(cpu['dense Res-U-Net']) / min(cpu['low-rank, CP factors']):.2f}x; "
          f"max |factors − dense kernels| = {diff:.2e}")
    if args.before:
        print(f"CP factors now vs before: {min(times['CP factors (before)']) / best:.2f}x (wall), "
              f"{min(cpu['CP factors (before)']) / min(cpu['low-rank, CP factors']):.2f}x (CPU s)")


if __name__ == "__main__":
    main()
