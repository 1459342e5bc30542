"""Our ``segment`` against nnU-Net v2's own predictor on the same BraTS-size case, interleaved.

    pip install -e ".[peers]"                                # nnunetv2 (not needed by anything else)
    .venv/bin/python benchmarks/bench_peers.py               # 4 × 240×240×155, 2 threads, 1 round
    .venv/bin/python benchmarks/bench_peers.py --scale 0.5 --rounds 2

nnU-Net side: ``nnUNetPredictor`` initialised in memory (``manual_initialization``) with the plan
nnU-Net's planner lays out for a 4-channel 1 mm BraTS case (3d_fullres, 128³ patch, 6-stage
PlainConvUNet 32…320, InstanceNorm, LeakyReLU; :data:`PLAN`), random weights (time does not depend
on them), tile step 0.5 and Gaussian weighting (its defaults), on the CPU; run once without
mirroring and once with its default mirroring (all 8 flip combinations). It reads the same NIfTI
files with SimpleITK, predicts with ``predict_single_npy_array`` (its own cropping, normalisation
and export to the input's shape) and writes the label map.

Our side: ``lesion-factorizer segment --preset balanced`` and ``--preset best`` with a
random-weight ``swin-factorizer-brats`` model file (the same synthetic case as
``bench_pipeline.py``). Every run is its own process with the same thread count; the four runs go
in turn, ``--rounds`` times, so a change in the machine's load hits all of them. Printed: wall and
CPU seconds (children's user+system) per run, best of the rounds, and the ratios the issue asks
for (nnU-Net without mirroring ÷ our balanced, nnU-Net with mirroring ÷ our best).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# nnU-Net v2's plans for the case (its planner's layout and field names; patch fixed at 128³)
PLAN = {
    "dataset_name": "Dataset001_BraTSLike", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
    "original_median_shape_after_transp": [140, 172, 137],
    "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {
        str(c): {"max": 5000.0, "mean": 600.0, "median": 580.0, "min": 0.0, "percentile_00_5": 80.0,
                 "percentile_99_5": 1800.0, "std": 250.0} for c in range(4)},
    "configurations": {"3d_fullres": {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [128, 128, 128], "median_image_size_in_voxels": [140.0, 172.0, 137.0],
        "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"] * 4,
        "use_mask_for_norm": [True] * 4, "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": False,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
                "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_conv_per_stage": [2] * 6,
                "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}},
}
DATASET = {"channel_names": {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"},
           "labels": {"background": 0, "edema": 1, "non_enhancing": 2, "enhancing": 3},
           "numTraining": 1, "file_ending": ".nii.gz"}

NNUNET = r"""
import json, sys
import numpy as np, SimpleITK as sitk, torch
plan, dataset, mirror, threads, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5]
paths = sys.argv[6:]
torch.set_num_threads(threads)
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
plans = PlansManager(plan)
config = plans.get_configuration("3d_fullres")
labels = plans.get_label_manager(dataset)
torch.manual_seed(0)
net = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                             config.network_arch_init_kwargs_req_import, len(dataset["channel_names"]),
                             labels.num_segmentation_heads, allow_init=True, deep_supervision=False).eval()
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                            perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
predictor.manual_initialization(net, plans, config, [net.state_dict()], dataset, "nnUNetTrainer", (0, 1, 2))
images = [sitk.ReadImage(p) for p in paths]
data = np.stack([sitk.GetArrayFromImage(i) for i in images]).astype(np.float32)
seg = predictor.predict_single_npy_array(data, {"spacing": list(images[0].GetSpacing())[::-1]})
result = sitk.GetImageFromArray(seg.astype(np.uint8))
result.CopyInformation(images[0])
sitk.WriteImage(result, out)
"""


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall s, CPU s of the child: user + system) of one process; raises on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd[:4])} … failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="field-of-view scale (1.0 = 240×240×155)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        print('error: nnunetv2 is not installed; pip install -e ".[peers]"', file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch

    from bench_pipeline import synth_case
    from LesionFactorizerLib import build_model
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file
    from LesionFactorizerLib.core.reportspec import read_report
    from LesionFactorizerLib.presets import PRESETS

    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    inputs = synth_case(work, args.scale)
    torch.manual_seed(0)
    net = build_model("swin-factorizer-brats")
    model = work / "bench.safetensors"
    save_model_file(model, net, make_metadata("tumor", net.config, name="bench", spacing=(1.0, 1.0, 1.0),
                                              patch_size=PRESETS["swin-factorizer-brats"].patch_size,
                                              description="random weights"))
    del net
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, nnUNet_def_n_proc=threads,
               nnUNet_raw=str(work), nnUNet_preprocessed=str(work), nnUNet_results=str(work))
    files = [inputs[n] for n in ("flair", "t1", "t1ce", "t2")]

    def ours(preset):
        return [sys.executable, "-m", "LesionFactorizerLib", "segment", "--task", "tumor", "--model", str(model),
                "-o", str(work / preset), "--device", "cpu", "--preset", preset, "--progress", "none",
                "--overwrite", "--no-overview", *[f"-i{n}={v}" for n, v in inputs.items()]]

    def theirs(mirror):
        return [sys.executable, "-c", NNUNET, json.dumps(PLAN), json.dumps(DATASET), "1" if mirror else "0",
                threads, str(work / f"nnunet_{int(mirror)}.nii.gz"), *files]

    runs = {"nnU-Net, no mirroring": theirs(False), "ours, balanced": ours("balanced"),
            "nnU-Net, mirroring (8 passes)": theirs(True), "ours, best": ours("best")}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, cmd in runs.items():
            times[name].append(run(cmd, env))
            print(f"{name:<32} {times[name][-1][0]:8.1f} s wall {times[name][-1][1]:8.1f} s CPU", flush=True)
    best = {name: (min(w for w, _ in t), min(c for _, c in t)) for name, t in times.items()}
    plan = read_report(work / "balanced").settings["window_plan"]
    print(f"\ncase 4 × {'×'.join(str(round(n * args.scale)) for n in (240, 240, 155))}, {args.threads} threads, "
          f"best of {args.rounds}, load average {os.getloadavg()[0]:.1f}; our window plan: {plan['kind']}, "
          f"{plan['windows']} window(s) of {'×'.join(map(str, plan['window']))}")
    for mine, peer, target in (("ours, balanced", "nnU-Net, no mirroring", 6), ("ours, best", "nnU-Net, mirroring (8 passes)", 10)):
        print(f"{peer} ÷ {mine}: {best[peer][0] / best[mine][0]:.2f}x wall, "
              f"{best[peer][1] / best[mine][1]:.2f}x CPU s (target ≥ {target}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
