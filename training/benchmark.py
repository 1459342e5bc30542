"""Training-step throughput and memory of an experiment config, on random patches.

    python -m LesionFactorizerLib.training.benchmark swin-factorizer-brats --device cuda --steps 30

Runs the experiment's real network, loss (with deep supervision) and optimiser on random inputs
of the configured patch and batch size — no data loading — and prints steps/s and peak memory
(CUDA: ``max_memory_allocated``; CPU: peak resident set size). bf16 autocast on CUDA unless
``--precision 32``. Used for acceptance 3 (full-size BraTS Swin Factorizer on a GPU); it never
requires one.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    from .cli_args import overrides_from
    from .config import load_config
    from .module import SegmentationModule

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=("bf16", "32"), default="bf16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, overrides_from(argparse.Namespace(set=args.set, batch_size=args.batch_size)))
    module = SegmentationModule(cfg.to_dict())
    dev = torch.device(args.device)
    model = module.model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    b = cfg.data.batch_size
    patch = list(cfg.data.patch_size)[::-1]
    n_in = model.config["kwargs"]["in_channels"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, n_in, *patch, generator=gen).to(dev)
    label = torch.randint(0, len(module.task.labels) + 1, (b, 1, *patch), generator=gen).to(dev)
    from .targets import encode

    target = encode(label, module.channels)
    use_bf16 = args.precision == "bf16" and dev.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            outs = model(x, all_heads=True)
        loss = module.criterion(outs, target)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"config": cfg.name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "precision": "bf16-mixed" if use_bf16 else "32", "batch_size": b, "patch_size": cfg.data.patch_size,
           "parameters": sum(p.numel() for p in model.parameters()), "steps": args.steps,
           "s_per_step": dt / args.steps, "steps_per_s": args.steps / dt, "final_loss": loss.item()}
    if dev.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
