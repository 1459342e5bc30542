"""Time and memory of the whole segment pipeline on a BraTS-size case (issue acceptance 6).

    .venv/bin/python benchmarks/bench_pipeline.py                 # 4 × 240×240×155 at 1 mm, Swin Factorizer (BraTS)
    .venv/bin/python benchmarks/bench_pipeline.py --scale 0.5     # quick look: half the field of view

What runs, each in its own process so peak RSS is measured per process (``wait4``):

1. baseline — load the model file and run ONE forward pass on one window of the plan the
   pipeline ran (report.json ``settings.window_plan``), nothing else: the network's own cost;
2. yardstick — ONE forward of MONAI's DynUNet (nnU-Net's 3-D full-resolution configuration, as in
   ``bench_model.py``) in ``channels_last_3d`` at 1×4×128³: the pipeline's total is printed as a
   multiple of it, a ratio that holds across machines better than seconds;
3. pipeline — ``lesion-factorizer segment`` on the synthetic case (random weights, real files),
   with and without ``--components``.

Reported: wall time per stage (from report.json), windows, peak RSS, and ratios against the
baseline measured in the same run (time per window, memory). Targets (issue 12): ≤ 30 s and
≤ 4 GB including components, on 2 CPU cores. Threads are pinned with ``--threads`` (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BASELINE = r"""
import sys, time, json
from LesionFactorizerLib.processmemory import configure_process_memory
configure_process_memory()   # the allocator the pipeline's CLI process has
import torch
torch.set_num_threads(int(sys.argv[3]))
from LesionFactorizerLib.modelfile import load_model_file
m = load_model_file(sys.argv[1]).model
roi = json.loads(sys.argv[2])
x = torch.randn(1, m.config["kwargs"]["in_channels"], *roi)
t = time.perf_counter()
with torch.no_grad():
    m(x)
print(json.dumps({"forward_s": time.perf_counter() - t}))
"""

DYNUNET = r"""
import sys, time, json
from LesionFactorizerLib.processmemory import configure_process_memory
configure_process_memory()
import torch
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
from bench_model import dynunet
net = dynunet(4, 4).eval().to(memory_format=torch.channels_last_3d)
x = torch.randn(1, 4, 128, 128, 128).contiguous(memory_format=torch.channels_last_3d)
with torch.no_grad():
    net(x[..., :32, :32, :32])
    t = time.perf_counter()
    net(x)
print(json.dumps({"forward_s": time.perf_counter() - t}))
"""


def synth_case(folder: Path, scale: float) -> dict[str, str]:
    """Four co-registered 1 mm volumes with a brain-sized ellipsoid and a tumour-like blob."""
    import numpy as np
    import SimpleITK as sitk

    shape = (max(16, round(155 * scale)), max(16, round(240 * scale)), max(16, round(240 * scale)))  # k, j, i
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = [s / 2 for s in shape]
    brain = ((k - c[0]) / (0.42 * shape[0])) ** 2 + ((j - c[1]) / (0.36 * shape[1])) ** 2 + \
            ((i - c[2]) / (0.30 * shape[2])) ** 2 <= 1
    blob = ((k - c[0]) ** 2 + (j - 0.8 * c[1]) ** 2 + (i - 1.1 * c[2]) ** 2) <= (12 * scale) ** 2
    rng = np.random.default_rng(0)
    paths = {}
    for n, name in enumerate(("flair", "t1", "t1ce", "t2")):
        a = np.where(brain, 400 + 60 * rng.standard_normal(shape), 0).astype(np.float32)
        a[blob & brain] += 300 + 50 * n
        image = sitk.GetImageFromArray(a)
        image.SetSpacing((1.0, 1.0, 1.0))
        path = folder / f"case_{name}.nii.gz"
        sitk.WriteImage(image, str(path))
        paths[name] = str(path)
    return paths


def run_child(args: list[str], env: dict) -> tuple[float, float, str, int]:
    """(wall s, peak RSS MiB of this child alone, stdout, return code)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err, text=True, encoding="utf-8")
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            sys.stderr.write(err.read()[-3000:])
        return wall, usage.ru_maxrss / 1024, out.read(), proc.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="field-of-view scale (1.0 = 240×240×155)")
    p.add_argument("--preset", default="balanced", choices=["fast", "balanced", "best"])
    p.add_argument("--model-preset", default="swin-factorizer-brats")
    p.add_argument("--windows", choices=["sliding", "whole"], help="window plan (default: the preset's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-components-run", action="store_true", help="only the run with --components")
    p.add_argument("--keep", metavar="DIR", help="keep case, model and outputs in DIR")
    args = p.parse_args()

    sys.path.insert(0, str(REPO))
    import torch

    from LesionFactorizerLib import build_model
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file
    from LesionFactorizerLib.core.reportspec import read_report
    from LesionFactorizerLib.presets import PRESETS

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(REPO))
    print(f"# bench_pipeline: scale {args.scale}, preset {args.preset}, {args.threads} threads, work dir {work}")

    t = time.perf_counter()
    inputs = synth_case(work, args.scale)
    print(f"synthetic case written in {time.perf_counter() - t:.1f} s")
    torch.manual_seed(0)
    net = build_model(args.model_preset)
    patch = PRESETS[args.model_preset].patch_size
    model_path = work / "bench.safetensors"
    save_model_file(model_path, net, make_metadata("tumor", net.config, name="bench", patch_size=patch,
                                                   spacing=(1.0, 1.0, 1.0), description="random weights"))
    del net

    runs = [True] if args.no_components_run else [False, True]
    results = {}
    for components in runs:
        out = work / f"out_components_{components}"
        cmd = [sys.executable, "-m", "LesionFactorizerLib", "segment", "--task", "tumor", "--model", str(model_path),
               "-o", str(out), "--device", "cpu", "--preset", args.preset, "--progress", "none", "--overwrite",
               *[f"-i{n}={v}" for n, v in inputs.items()]]
        if components:
            cmd.append("--components")
        if args.windows:
            cmd += ["--windows", args.windows]
        wall, peak, _, rc = run_child(cmd, env)
        if rc:
            print(f"pipeline run failed (exit {rc})")
            return rc
        report = read_report(out)
        results[components] = (wall, peak, report)

    report = results[runs[-1]][2]
    plan = report.settings["window_plan"]
    roi = plan["window"][::-1]   # numpy order for the baseline tensor
    crop = report.preprocessing["crop_size"]
    windows = plan["windows"]
    base_wall, base_peak, base_out, rc = run_child(
        [sys.executable, "-c", BASELINE, str(model_path), json.dumps(roi), str(args.threads)], env)
    forward_s = json.loads(base_out)["forward_s"]
    _, _, dyn_out, rc = run_child([sys.executable, "-c", DYNUNET, str(args.threads), str(REPO / "benchmarks")], env)
    dynunet_s = json.loads(dyn_out)["forward_s"]

    print(f"\ninput: 4 × {'×'.join(map(str, report.geometry['size']))} voxels; foreground box "
          f"{'×'.join(map(str, crop))}; window plan {plan['kind']}: {windows} window(s) of "
          f"{'×'.join(map(str, roi[::-1]))}; passes {report.settings['passes']}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"baseline (one bare forward on one window, own process): {forward_s:.1f} s, peak RSS {base_peak:.0f} MiB")
    print(f"yardstick (one DynUNet channels_last_3d forward at 1×4×128³, own process): {dynunet_s:.1f} s")
    stages = ["read", "preprocess", "model", "inference", "postprocess", "components", "write", "total"]
    print(f"\n{'stage':<12}" + "".join(f"{'components' if c else 'no components':>16}" for c in runs))
    for stage in stages:
        print(f"{stage:<12}" + "".join(f"{results[c][2].timings_s.get(stage, 0.0):>15.1f}s" for c in runs))
    print(f"{'process wall':<12}" + "".join(f"{results[c][0]:>15.1f}s" for c in runs))
    print(f"{'peak RSS':<12}" + "".join(f"{results[c][1]:>12.0f} MiB" for c in runs))
    for c in runs:
        wall, peak, rep = results[c]
        inf = rep.timings_s["inference"]
        print(f"\n[{'with' if c else 'without'} components] inference / (windows × baseline forward) = "
              f"{inf / (windows * forward_s):.2f}; total / inference = {rep.total_seconds / inf:.2f}; "
              f"peak RSS / baseline = {peak / base_peak:.2f}; "
              f"total / DynUNet forward = {rep.total_seconds / dynunet_s:.2f} (target ≤ 3); "
              f"target ≤30 s: {'met' if wall <= 30 else 'not met'} ({wall:.0f} s), "
              f"≤4 GB: {'met' if peak <= 4096 else 'not met'} ({peak / 1024:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
