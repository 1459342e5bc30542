"""GPU timing, prepared for a lent GPU (none has been lent so far): one script, every number in one run.

    .venv/bin/python benchmarks/bench_gpu.py                       # BraTS-size case, all variants
    .venv/bin/python benchmarks/bench_gpu.py --scale 0.5 --repeats 2 --no-compile   # quick look

Measured on the same GPU, best of ``--repeats`` after a warm-up, with ``torch.cuda.synchronize``:

1. forward of one 128³ window (1×4×128³): swin-factorizer-brats in fp32 / bf16 / fp16 autocast,
   eager and ``torch.compile`` (compile time printed separately), against MONAI DynUNet
   (nnU-Net-like, as in ``bench_model.py``) in the same precisions; max |Δ| of each vs fp32 eager;
2. the whole sliding-window inference of a BraTS-size case (4 × 240×240×155, the 128³ ROI the
   pipeline uses, overlap 0.5, windows batched by ``auto_sw_batch_size``) with and without NMF
   component capture, fp32 eager;
3. peak GPU memory of each (``torch.cuda.max_memory_allocated``).

Weights are random (speed does not depend on them). Exits with a one-line error when no CUDA
device is available.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from LesionFactorizerLib.pipeline.inference import run_inference
from LesionFactorizerLib.presets import build_model

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_model import dynunet  # noqa: E402  (same baseline definition)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall time over ``repeats`` and the peak memory (GB) of those runs."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, torch.cuda.max_memory_allocated() / 2**30, out


def forward_table(args, dev) -> None:
    x = torch.randn(1, 4, *(args.size,) * 3, device=dev)
    nets = {"swin-factorizer-brats": build_model("swin-factorizer-brats").eval().to(dev),
            "DynUNet": dynunet(4, 3).eval().to(dev)}
    print(f"\n1. forward 1×4×{args.size}³ on {torch.cuda.get_device_name(dev)}, best of {args.repeats}")
    print(f"{'network':<24}{'precision':>10}{'mode':>10}{'s':>9}{'peak GB':>9}{'max|Δ| vs fp32':>16}")
    for name, net in nets.items():
        with torch.inference_mode():
            ref = net(x).float()
        variants = [("eager", net)]
        if not args.no_compile:
            start = time.perf_counter()
            compiled = torch.compile(net)
            with torch.inference_mode():
                compiled(x)
            torch.cuda.synchronize()
            print(f"  (torch.compile of {name}: {time.perf_counter() - start:.1f} s including the first run)")
            variants.append(("compiled", compiled))
        for mode, fn in variants:
            for prec, dtype in PRECISIONS.items():
                def run(fn=fn, dtype=dtype):
                    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                        return fn(x)
                run()  # warm-up (and compile for this precision)
                t, peak, out = timed(run, args.repeats)
                diff = (out.float() - ref).abs().max().item()
                print(f"{name:<24}{prec:>10}{mode:>10}{t:9.3f}{peak:9.2f}{diff:16.2e}")


def case_table(args, dev) -> None:
    shape = tuple(max(16, -(-round(s * args.scale) // 16) * 16) for s in (155, 240, 240))
    array = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    model = build_model("swin-factorizer-brats").eval()
    roi = tuple(min(128, s) for s in shape)
    print(f"\n2. whole case 4×{'×'.join(map(str, shape))} (padded), ROI {roi}, fp32 eager")
    for components in (False, True):
        def run(components=components):
            return run_inference([model], array, roi, overlap=0.5, sw_batch_size=None, device="cuda",
                                 want_components=components)
        run()
        t, peak, result = timed(run, args.repeats)
        print(f"   components={str(components):<5} {t:8.2f} s  peak GPU {peak:.2f} GB  "
              f"windows/batch {result.sw_batch_size}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="cubic window for the forward table")
    p.add_argument("--scale", type=float, default=1.0, help="field-of-view scale of the whole case")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch; run this on a machine with one", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    forward_table(args, dev)
    case_table(args, dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
