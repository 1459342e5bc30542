"""Forward-pass wall time of a preset against MONAI's DynUNet, measured in the same run.

    python benchmarks/bench_model.py                       # swin-factorizer-brats at 1×4×128³
    python benchmarks/bench_model.py --preset local-factorizer-brats --size 96 --repeats 5

DynUNet is configured like nnU-Net's 3-D full-resolution network (filters 32, 64, 128, 256, 320;
strides 1, 2, 2, 2, 2; 3³ kernels; GroupNorm with 8 groups). Both run in eval mode under
``torch.no_grad`` with the same threads, interleaved, and the best of ``--repeats`` runs is
reported (the minimum is the least noisy estimate on a shared machine), plus the ratio. DynUNet is
timed in its default (channels-first) layout and, as a stronger baseline, in ``channels_last_3d``.
``--profile`` prints where the preset's time goes, per block and per operator. The timed forward
is the eager inference path (memory-saving blocks, the compiled window-NMF kernel of
``nn/native.py`` where a C compiler exists); its max difference to the plain graph is printed.

``--backends eager,compile,onnx`` also times the preset through those inference backends
(``pipeline/backends.py``; compile/export time reported separately, outputs checked against
eager). ``--load`` starts two busy neighbours on the same cores for the whole measurement — one
compute-bound (a Python busy loop), one streaming memory (a numpy copy of a 512 MB array, over and
over) — as a reader's workstation runs a browser and a PACS viewer beside us; every network is
timed under that same load, interleaved. ``--before OLD/factorizer.py`` adds the same preset and weights built from an older
``nn/factorizer.py`` (e.g. ``git show HEAD~3:LesionFactorizerLib/nn/factorizer.py > /tmp/old.py``),
timed in the same run: before/after as a ratio. CPU seconds (process time) are printed beside wall
time: on a shared machine they show the work done, whatever the scheduler did.
"""

from __future__ import annotations

import os

from LesionFactorizerLib.processmemory import configure_process_memory

MEMORY = configure_process_memory()  # before torch, as the CLI does: same allocator for both nets

import argparse
import contextlib
import statistics
import subprocess
import sys
import time

import torch

from LesionFactorizerLib.presets import PRESETS, build_model, count_flops


def dynunet(in_channels: int, out_channels: int) -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(3, in_channels, out_channels, kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2],
                   upsample_kernel_size=[2] * 4, filters=[32, 64, 128, 256, 320],
                   norm_name=("group", {"num_groups": 8}))


CPU: dict[str, list[float]] = {}
# the two neighbours of --load: compute-bound, and memory-streaming (512 MB copied into a second array)
NEIGHBOURS = {"busy loop": "while True: pass",
              "512 MB copy": "import numpy as np\na = np.ones(2**27, np.float32)\nb = np.empty_like(a)\n"
                             "while True: np.copyto(b, a)"}


@contextlib.contextmanager
def neighbours(on: bool):
    """The ``--load`` neighbours running (same priority as this process) inside the ``with``."""
    procs = [subprocess.Popen([sys.executable, "-c", code]) for code in NEIGHBOURS.values()] if on else []
    try:
        time.sleep(2.0 if on else 0.0)   # the copy's arrays are allocated and streaming
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def timed(model, x: torch.Tensor, name: str = "") -> float:
    start, cpu = time.perf_counter(), time.process_time()
    model(x)
    CPU.setdefault(name, []).append(time.process_time() - cpu)
    return time.perf_counter() - start


def before_model(path: str, net: torch.nn.Module) -> torch.nn.Module:
    """``net``'s preset and weights, built by the Factorizer class of an older factorizer.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("factorizer_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    old = module.Factorizer(**net.config["kwargs"]).eval()
    old.load_state_dict(net.state_dict())
    return old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="swin-factorizer-brats", choices=list(PRESETS))
    parser.add_argument("--size", type=int, default=128, help="cubic input size (default 128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--backends", default="eager", help="comma-separated: eager, compile, onnx")
    parser.add_argument("--before", metavar="FACTORIZER_PY", help="an older nn/factorizer.py to time as well")
    parser.add_argument("--load", action="store_true",
                        help="time everything beside a busy loop and a 512 MB memory-streaming copy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    net = build_model(args.preset).eval()
    cin, cout = net.config["kwargs"]["in_channels"], net.config["kwargs"]["out_channels"]
    base = dynunet(cin, cout).eval()
    base_cl = dynunet(cin, cout).eval().to(memory_format=torch.channels_last_3d)
    shape = (1, cin, *(args.size,) * 3)
    x = torch.randn(shape)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    candidates = {args.preset: (net, x), "DynUNet": (base, x), "DynUNet (channels_last_3d)": (base_cl, x_cl)}
    if args.before:
        candidates[f"{args.preset} (before)"] = (before_model(args.before, net), x)
    diffs: dict[str, float] = {}
    for name in [b for b in args.backends.split(",") if b and b != "eager"]:
        from LesionFactorizerLib.pipeline import backends

        why = backends.unavailable(name)
        if why:
            print(f"backend {name}: unavailable ({why})")
            continue
        start = time.perf_counter()
        with torch.no_grad():
            runner = backends.build(name, net, shape, notify=print)
            diffs[name] = backends.max_difference(runner, net, x)  # first call: compiles / exports
        print(f"backend {name}: set up in {time.perf_counter() - start:.1f} s, max |{name} - eager| = {diffs[name]:.2e}")
        candidates[f"{args.preset} [{name}]"] = (runner, x)

    times: dict[str, list[float]] = {k: [] for k in candidates}
    with torch.no_grad(), neighbours(args.load):  # (not inference_mode: a compiled backend would recompile)
        for name, (model, inp) in candidates.items():  # warm-up: kernels, allocator
            if isinstance(model, torch.nn.Module):
                model(inp[..., :32, :32, :32])
        for _ in range(args.repeats):
            for name, (model, inp) in candidates.items():
                times[name].append(timed(model, inp, name))

    flops = {args.preset: count_flops(net, shape), "DynUNet": count_flops(base, shape)}
    flops["DynUNet (channels_last_3d)"] = flops["DynUNet"]
    for name in times:
        flops.setdefault(name, flops[args.preset])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"input {tuple(shape)}, {args.threads} threads, best of {args.repeats}, load average {load:.1f}; {MEMORY}"
          + (f"; under load: {' + '.join(NEIGHBOURS)} on the same cores" if args.load else ""))
    print(f"{'network':<40} {'best s':>8} {'median s':>9} {'CPU s':>7} {'GFLOP':>8} {'GFLOP/s':>8}")
    for name, ts in times.items():
        best = min(ts)
        print(f"{name:<40} {best:8.2f} {statistics.median(ts):9.2f} {min(CPU[name]):7.2f} "
              f"{flops[name] / 1e9:8.1f} {flops[name] / 1e9 / best:8.1f}")
    mine = min(times[args.preset])
    print(f"speed-up vs DynUNet: {min(times['DynUNet']) / mine:.2f}x; "
          f"vs DynUNet channels_last_3d: {min(times['DynUNet (channels_last_3d)']) / mine:.2f}x; "
          f"FLOP ratio {flops['DynUNet'] / flops[args.preset]:.2f}x")
    if hasattr(net, "blocks"):  # the timed (memory-saving, native-kernel) path against the plain graph
        from LesionFactorizerLib.nn import native
        from LesionFactorizerLib.nn.factorizer import plain_forward

        with torch.no_grad():
            fast = net(x)
            with plain_forward(net):
                plain = net(x)

        print(f"max |timed - plain forward| = {(fast - plain).abs().max().item():.2e} "
              f"(logits up to {plain.abs().max().item():.2f}); window NMF: {native.status()}")
    for name in times:
        if name.startswith(f"{args.preset} ") and name != args.preset:
            print(f"{name}: eager is {min(times[name]) / mine:.2f}x as fast (wall), "
                  f"{min(CPU[name]) / min(CPU[args.preset]):.2f}x (CPU s, best of each)")
    if args.profile:
        profile(net, x)


def profile(net: torch.nn.Module, x: torch.Tensor) -> None:
    from torch.profiler import profile as torch_profile

    spent: dict[str, float] = {}

    def hooks(name):
        def pre(*_):
            spent[name] = -time.perf_counter()

        def post(*_):
            spent[name] += time.perf_counter()

        return pre, post

    handles = []
    for name, module in getattr(net, "blocks", {}).items():
        pre, post = hooks(name)
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    with torch.inference_mode(), torch_profile() as prof:
        total = timed(net, x)
    for h in handles:
        h.remove()
    print(f"\nper block (s), total {total:.2f}:")
    for name, t in spent.items():
        print(f"  {name:<10} {t:6.3f}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
