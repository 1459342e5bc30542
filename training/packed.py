"""Train on one GPU from a packed array file — the fast path for small models such as the demo ones.

``lesion-factorizer train`` reads case files with SimpleITK and augments patches with MONAI on CPU
workers. For a model of a million parameters the CPU side is then the bottleneck, and a rented
GPU host may lack SimpleITK, MONAI and nilearn altogether. This module splits the work in two:

``pack`` (where the library is installed)
    Every case of the config's fold split goes through :func:`preprocess.load_case` — the arrays
    ``lesion-factorizer train`` would use, i.e. exactly what inference sees — and is stored in one
    ``.npz``: images quantised to uint8 in steps of 1/20 of a z-score unit (error ≤ 0.025 σ, far
    below the images' noise; half the size of fp16 so more cases travel), labels as uint8.

``train`` (on the GPU host; needs what a stock PyTorch image has — torch, numpy, PyYAML, einops,
safetensors, scipy, lightning (for the checkpoint plug-in's module) — but not SimpleITK or MONAI)
    All volumes live on the GPU. Patches (``data.pos_fraction`` of them centred on a lesion voxel)
    and every augmentation of ``data.augmentation`` (affine, flips, noise, smoothing, intensity
    scale/shift, bias field, contrast — the ranges and probabilities of ``augment.py``) are made
    there, a batch at a time. Network, loss, optimiser and schedule are those of
    ``lesion-factorizer train`` (in fp32 with TF32 matrix products, not bf16: the NMF layers'
    multiplicative updates are the part that tolerates low precision least); validation is a
    sliding window over the packed validation cases.
    ``--minutes`` fits the run to a time budget: the step count (and so the cosine schedule) is set
    from the speed of the first steps. The output is the run layout of ``lesion-factorizer train``
    (``checkpoints/{best,last}.ckpt.safetensors``, ``logs/metrics.csv``, ``result.json``), so
    ``lesion-factorizer export`` and ``training/demo_models.py``'s card step read it unchanged.

    python training/packed.py pack demo-ms-new-gpu --data-root out/demo-models/data-gpu/ms-new-train --out pack.npz
    python training/packed.py train demo-ms-new-gpu --pack pack.npz --output-dir runs --minutes 7
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):      # run as a script from a checkout: python training/packed.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "training"

from .config import TrainConfig, input_names, load_config  # noqa: E402

Q_SCALE, Q_ZERO = 20, 80         # uint8 code q ↔ z-score (q − 80)/20, i.e. [-4, 8.75] in steps of 0.05


def pack(cfg: TrainConfig, out: Path, fold: int = 0) -> dict:
    """Preprocess the fold's training and validation cases into ``out`` (.npz); returns a summary."""
    from LesionFactorizerLib.datasets import discover

    from . import folds
    from .preprocess import load_case

    d = cfg.data
    cases = discover(d.format, d.root, cfg.task, d.label_map)
    train_cases, val_cases = folds.split(cases, fold, d.folds, d.fold_seed)
    val_cases = val_cases[: d.max_val_cases] if d.max_val_cases else val_cases
    names = input_names(cfg)
    arrays: dict[str, np.ndarray] = {}
    clipped = voxels = 0
    for split, group in (("train", train_cases), ("val", val_cases)):
        for i, case in enumerate(group):
            c = load_case(case, names, d.spacing, task=cfg.task)
            code = np.round(c["image"] * Q_SCALE + Q_ZERO)
            clipped += int(((code < 0) | (code > 255)).sum())
            voxels += code.size
            arrays[f"{split}{i}_image"] = np.clip(code, 0, 255).astype(np.uint8)
            arrays[f"{split}{i}_label"] = c["label"].astype(np.uint8)
            arrays[f"{split}{i}_spacing"] = np.asarray(c["spacing"][::-1], np.float64)   # (z, y, x) mm
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays, **{"meta": np.asarray(json.dumps(pack_meta(cfg)))})
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"pack": str(out), "train": len(train_cases), "val": len(val_cases), "inputs": names,
            "clipped_fraction": clipped / max(voxels, 1), "bytes": out.stat().st_size}


def pack_meta(cfg: TrainConfig) -> dict:
    """What the packed arrays depend on; ``train`` refuses a pack made for something else."""
    from .preprocess import VERSION

    d = cfg.data
    return {"task": cfg.task, "inputs": input_names(cfg), "spacing": d.spacing, "root": str(d.root),
            "folds": d.folds, "fold_seed": d.fold_seed, "preprocess_version": VERSION}


def load_pack(path: Path, device, cfg: TrainConfig | None = None) -> dict[str, list]:
    """Train and validation volumes on ``device``; with ``cfg``, the pack must have been made for
    its task, inputs, spacing, data root and split."""
    from LesionFactorizerLib.errors import UserError

    if not Path(path).is_file():
        raise UserError(f"pack {path} not found; make it with 'python training/packed.py pack CONFIG --out {path}'")
    out: dict[str, list] = {"train": [], "val": []}
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"])) if "meta" in z else None
        if cfg is not None:
            want = pack_meta(cfg)
            if meta is None:
                raise UserError(f"{path} is not a pack written by 'packed.py pack'")
            differ = [k for k in want if meta.get(k) != want[k] and k != "root"]
            if differ:
                raise UserError(f"pack {path} was made for {', '.join(f'{k}={meta.get(k)}' for k in differ)}, "
                                f"the config asks for {', '.join(f'{k}={want[k]}' for k in differ)}; pack again")
        for split in out:
            i = 0
            while f"{split}{i}_image" in z:
                # (q - 80) / 20: exact zeros stay exact (the pipeline's background is 0)
                image = (torch.from_numpy(z[f"{split}{i}_image"]).to(device).float() - Q_ZERO) / Q_SCALE
                label = torch.from_numpy(z[f"{split}{i}_label"]).to(device)
                out[split].append({"image": image, "label": label, "spacing": tuple(z[f"{split}{i}_spacing"])})
                i += 1
    return out


class GpuPatches:
    """Random augmented patch batches from volumes held on the device (see the module docstring)."""
    def __init__(self, cases: list[dict], patch: list[int], pos_fraction: float | None, aug, seed: int):
        self.patch, self.pos, self.aug = patch, pos_fraction, aug
        self.device = cases[0]["image"].device
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.cases = [self._pad(c) for c in cases]
        self.fg = [torch.nonzero(c["label"][0] > 0) for c in self.cases]

    def _pad(self, case: dict) -> dict:
        short = [max(0, p - s) for p, s in zip(self.patch, case["image"].shape[1:])]
        if not any(short):
            return case
        pad = [v for s in reversed(short) for v in (s // 2, s - s // 2)]
        return {"image": F.pad(case["image"], pad), "label": F.pad(case["label"], pad)}

    def _u(self, n: int, low: float = 0.0, high: float = 1.0):
        return low + (high - low) * torch.rand(n, generator=self.gen, device=self.device)

    def _crop(self, i: int, centred: bool):
        c = self.cases[i]
        shape = c["image"].shape[1:]
        if centred and len(self.fg[i]):
            centre = self.fg[i][int(self._u(1).item() * len(self.fg[i]))]
        else:
            centre = torch.stack([(self._u(1) * s).long()[0] for s in shape])
        start = [min(max(int(ct) - p // 2, 0), s - p) for ct, p, s in zip(centre.tolist(), self.patch, shape)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, self.patch))
        return c["image"][(slice(None),) + sl], c["label"][(slice(None),) + sl]

    def batch(self, size: int):
        idx = (self._u(size) * len(self.cases)).long().tolist()
        centred = (self._u(size) < (self.pos or 0.0)).tolist() if self.pos is not None else [False] * size
        pairs = [self._crop(i, c) for i, c in zip(idx, centred)]
        x = torch.stack([p[0] for p in pairs])
        y = torch.stack([p[1] for p in pairs]).float()
        return self._augment(x, y)

    def _chosen(self, n: int, prob: float):
        return self._u(n) < prob

    def _augment(self, x, y):
        a, n = self.aug, x.shape[0]
        view = (n, 1, 1, 1, 1)
        if a.affine:
            sel = self._chosen(n, a.affine.prob)
            if bool(sel.any()):
                r = math.radians(a.affine.rotate_deg)
                ang = self._u(3 * n, -r, r).view(n, 3)
                scale = self._u(3 * n, 1 - a.affine.scale, 1 + a.affine.scale).view(n, 3)
                # rotate in voxel units: affine_grid works in [-1, 1] per axis, so conjugate with the
                # patch's half-sizes (x, y, z order), else a non-cubic patch would be sheared
                half = torch.tensor(list(x.shape[:1:-1]), device=x.device, dtype=x.dtype) / 2
                theta = (_rotations(ang) * scale[:, None, :]) * half[None, None, :] / half[None, :, None]
                eye = torch.eye(3, device=x.device).expand(n, 3, 3)
                theta = torch.where(sel[:, None, None], theta, eye)
                grid = F.affine_grid(torch.cat([theta, theta.new_zeros(n, 3, 1)], 2), list(x.shape),
                                     align_corners=False)
                x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if a.flip:
            for axis in a.flip.axes:
                sel = self._chosen(n, a.flip.prob).view(view)
                x = torch.where(sel, x.flip(2 + axis), x)
                y = torch.where(sel, y.flip(2 + axis), y)
        if a.noise:
            sel = self._chosen(n, a.noise.prob).view(view)
            std = self._u(n, 0.0, a.noise.std).view(view)
            x = x + sel * std * torch.randn(x.shape, generator=self.gen, device=x.device)
        if a.smooth:
            sel = self._chosen(n, a.smooth.prob)
            if bool(sel.any()):
                sigma = float(self._u(1, *a.smooth.sigma).item())     # one width per batch
                x = torch.where(sel.view(view), _gaussian_blur(x, sigma), x)
        if a.scale_intensity:
            sel = self._chosen(n, a.scale_intensity.prob).view(view)
            f = self._u(n, -a.scale_intensity.factor, a.scale_intensity.factor).view(view)
            x = x * (1 + sel * f)
        if a.shift_intensity:
            sel = self._chosen(n, a.shift_intensity.prob).view(view)
            x = x + sel * self._u(n, -a.shift_intensity.offset, a.shift_intensity.offset).view(view)
        if a.bias_field:
            sel = self._chosen(n, a.bias_field.prob)
            if bool(sel.any()):
                field = _bias_field(x.shape, a.bias_field.degree, a.bias_field.coeff, self._u)
                x = torch.where(sel.view(view), x * field, x)
        if a.contrast:
            sel = self._chosen(n, a.contrast.prob).view(view)
            gamma = self._u(n, *a.contrast.gamma).view(view)
            lo = x.amin(dim=(1, 2, 3, 4), keepdim=True)        # over all channels, as MONAI does
            rng = x.amax(dim=(1, 2, 3, 4), keepdim=True) - lo
            adjusted = ((x - lo) / rng.clamp_min(1e-7) + 1e-7).pow(gamma) * rng + lo
            x = torch.where(sel, adjusted, x)
        return x.contiguous(), y.round().to(torch.uint8)


def _rotations(angles):
    """(n, 3) angles → (n, 3, 3) rotation matrices R_z·R_y·R_x."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rx = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    ry = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    rz = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def _gaussian_blur(x, sigma: float):
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = k.numel()
        pad = [0] * 6
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape).expand(c, 1, *shape[2:]), groups=c)
    return x


def _bias_field(shape, degree: int, coeff, uniform):
    """exp of a random Legendre polynomial of total degree ≤ ``degree`` over the patch (as MONAI's
    RandBiasField), one field per sample, shared by its channels."""

    n, _, *size = shape
    axes = [torch.linspace(-1, 1, s, device=uniform(1).device) for s in size]

    def legendre(t, k):
        return [torch.ones_like(t), t, 0.5 * (3 * t ** 2 - 1), 0.5 * (5 * t ** 3 - 3 * t)][k]

    log = torch.zeros((n, 1, *size), device=axes[0].device)
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            for k in range(degree + 1 - i - j):
                term = legendre(axes[0], i)[:, None, None] * legendre(axes[1], j)[None, :, None] * \
                    legendre(axes[2], k)[None, None, :]
                log = log + uniform(n, *coeff).view(n, 1, 1, 1, 1) * term
    return torch.exp(log)


def sliding_window(model, image, patch: list[int], batch: int = 32):
    """Logits of ``model`` over ``image`` (C, z, y, x) with half-overlapping patches, averaged.

    ``train`` and ``segment`` use MONAI's sliding window; this host may not have MONAI, and
    checkpoint selection needs no more than a plain average of half-overlapping windows."""
    size = list(image.shape[1:])
    short = [max(0, p - s) for p, s in zip(patch, size)]
    x = F.pad(image, [v for s in reversed(short) for v in (0, s)]) if any(short) else image
    full = list(x.shape[1:])
    starts = []
    for s, p in zip(full, patch):
        step = max(1, p // 2)
        pos = list(range(0, s - p + 1, step))
        if pos[-1] != s - p:
            pos.append(s - p)
        starts.append(pos)
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    out = count = None
    for i in range(0, len(corners), batch):
        group = corners[i:i + batch]
        tiles = torch.stack([x[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in group])
        logits = model(tiles)
        if out is None:
            out = logits.new_zeros((logits.shape[1], *full))
            count = logits.new_zeros((1, *full))
        for (a, b, c), t in zip(group, logits):
            out[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] += t
            count[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]] += 1
    out = out / count
    return out[:, :size[0], :size[1], :size[2]]


def validate(model, cases: list[dict], cfg: TrainConfig, patch: list[int]) -> dict[str, float]:
    """Mean validation scores, named as ``lesion-factorizer train`` logs them (val/…), HD95 left out."""
    from LesionFactorizerLib.tasks import get_task

    from .module import case_scores, mean_scores, output_mode, scored_regions
    from .targets import channel_labels, decode_regions

    task = get_task(cfg.task)
    mode = output_mode(cfg)
    channels = channel_labels(task, mode)
    regions = scored_regions(task)
    rows = []
    model.eval()
    with torch.no_grad():
        for case in cases:
            masks = decode_regions(sliding_window(model, case["image"], patch)[None], channels, mode, regions)
            rows.append(case_scores({n: m[0].cpu().numpy() for n, m in masks.items()}, case["label"][0].cpu().numpy(),
                                    regions, task, case["spacing"], hd95=False))
    model.train()
    means = {f"val/{k}": v for k, v in mean_scores(rows).items()}
    means["val/dice"] = float(np.mean([means[f"val/dice_{n}"] for n in regions]))
    return means


def train(cfg: TrainConfig, pack_path: Path, output_dir: Path, minutes: float | None, device: str,
          fold: int = 0, init: Path | None = None, log=print) -> dict:
    """Train ``cfg`` on the packed arrays, from the weights of checkpoint ``init`` if given (a new
    schedule, warm-up included; those weights, validated first, are the best to beat); returns the
    contents of ``result.json``."""

    from LesionFactorizerLib.errors import UserError
    from LesionFactorizerLib.evaluation.cohort import write_csv

    from .checkpoint_io import SUFFIX, load_checkpoint_file, save_checkpoint_file
    from .losses import DeepSupervisionLoss, SegmentationLoss
    from .module import build_network, output_mode
    from .run import run_dir_for
    from .schedules import WarmupCosine
    from .targets import channel_labels, encode
    from LesionFactorizerLib.tasks import get_task

    t0 = time.perf_counter()
    lc, o, t = cfg.loss, cfg.optim, cfg.trainer
    if o.scheduler == "plateau":
        raise UserError("optim.scheduler: plateau is not supported here (it needs Lightning's validation "
                        "loop); use warmup_cosine or constant, or 'lesion-factorizer train'")
    run_dir = run_dir_for(cfg, fold, output_dir)
    if (run_dir / "result.json").exists() or (run_dir / "checkpoints" / f"last{SUFFIX}").exists():
        raise UserError(f"{run_dir} already holds a run; choose another --output-dir (to continue it, "
                        f"--init {run_dir / 'checkpoints' / f'best{SUFFIX}'} with a new --output-dir)")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)     # synchronize() and the device name below mean this GPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    data = load_pack(pack_path, dev, cfg)
    if not data["train"]:
        raise UserError(f"{pack_path} holds no training case")
    model = build_network(cfg)
    start_step, history = 0, None
    if init:
        ckpt = load_checkpoint_file(init)
        model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
        start_step = int(ckpt.get("global_step", 0))
        history = _history(Path(init))
    model = model.to(dev)
    # a continued run must not replay the patch stream of the run it continues
    torch.manual_seed(t.seed + start_step)
    patch = list(cfg.data.patch_size)[::-1]        # config (x, y, z) → arrays (z, y, x)
    sampler = GpuPatches(data["train"], patch, cfg.data.pos_fraction, cfg.data.augmentation, t.seed + start_step)
    channels = channel_labels(get_task(cfg.task), output_mode(cfg))
    criterion = DeepSupervisionLoss(SegmentationLoss(lc.kind, lc.smooth, lc.squared, lc.focal_gamma),
                                    lc.deep_supervision)
    opt = (torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam)(
        model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "fold": fold}, indent=2),
                                         encoding="utf-8")

    def step_once() -> float:
        batch = sampler.batch(cfg.data.batch_size)
        loss = criterion(model(batch[0], all_heads=True), encode(batch[1], channels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def save(path: Path, step: int) -> None:
        save_checkpoint_file({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                              "hyper_parameters": {"config": cfg.to_dict(), "fold": fold},
                              "global_step": start_step + step, "trainer": "training/packed.py",
                              "init": str(init) if init else None}, path)

    total, val_every = t.max_steps, t.val_every
    schedule = WarmupCosine(o.warmup_steps, total)
    rows: list[dict] = []
    best, best_step, step, losses = -math.inf, None, 0, []
    calibrate = (10, 40)       # steps timed to fit the budget; the first ones include warm-up
    t_cal = val_seconds = 0.0

    def validation() -> None:
        nonlocal best, best_step, val_seconds
        t_val = time.perf_counter()
        scores = validate(model, data["val"], cfg, patch) if data["val"] else {}
        row = {"step": start_step + step, "train/loss": float(np.mean(losses)) if losses else float("nan"),
               "seconds": round(time.perf_counter() - t0, 1), **scores}
        losses.clear()
        rows.append(row)
        log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        if scores and scores["val/dice"] > best:
            best, best_step = scores["val/dice"], start_step + step
            save(ckpt_dir / f"best{SUFFIX}", step)
        val_seconds += time.perf_counter() - t_val

    if init:
        validation()       # the starting weights are the score to beat
    while step < total:
        for g in opt.param_groups:
            g["lr"] = o.lr * (schedule(step) if o.scheduler == "warmup_cosine" else 1.0)
        losses.append(step_once())
        step += 1
        if minutes and step in calibrate:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step == calibrate[0]:
                t_cal, val_before = time.perf_counter(), val_seconds
            else:
                # steps from the measured speed (validation time excluded), leaving a tenth of the
                # rest for validation
                per_step = (time.perf_counter() - t_cal - (val_seconds - val_before)) / (calibrate[1] - calibrate[0])
                left = minutes * 60 - (time.perf_counter() - t0)
                total = max(step + 1, min(t.max_steps, step + int(0.9 * left / per_step)))
                val_every = max(1, total // 10)
                schedule = WarmupCosine(o.warmup_steps, total)
                log(f"{cfg.name}: {per_step * 1e3:.0f} ms/step → {total} steps, validation every {val_every}")
        if step % val_every == 0 or step == total:
            validation()
            if minutes and time.perf_counter() - t0 > minutes * 60:
                log(f"{cfg.name}: time budget reached at step {start_step + step}")
                break
    save(ckpt_dir / f"last{SUFFIX}", step)
    write_csv(rows, run_dir / "logs" / "metrics.csv")
    found = best_step is not None
    result = {"best": str(ckpt_dir / f"best{SUFFIX}") if found else None, "last": str(ckpt_dir / f"last{SUFFIX}"),
              "best_val_dice": best if found else None, "best_step": best_step, "steps": start_step + step,
              "seconds": time.perf_counter() - t0, "fold": fold,
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
              "trainer": "training/packed.py", "init": str(init) if init else None, "init_step": start_step or None,
              "history": history}
    (run_dir / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _history(init: Path) -> str | None:
    """The stages behind checkpoint ``init``, from the result.json of its run (when it sits in one),
    for model cards: "N steps in M min on DEVICE", earlier stages first."""
    result = init.parent.parent / "result.json"
    if not result.is_file():
        return None
    r = json.loads(result.read_text(encoding="utf-8"))
    stage = f"{r.get('steps')} steps in {r.get('seconds', 0) / 60:.0f} min on {r.get('device', 'CPU')}"
    return f"{r['history']}, then {stage}" if r.get("history") else stage


def main(argv: list[str] | None = None) -> int:
    from .cli_args import overrides_from

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="preprocess a config's fold-0 cases into one .npz")
    a.add_argument("--out", required=True, help="the .npz to write")
    b = sub.add_parser("train", help="train from a pack on one GPU (or the CPU, for a check)")
    b.add_argument("--pack", required=True)
    b.add_argument("--output-dir", required=True)
    b.add_argument("--minutes", type=float, help="time budget; sets the step count from the first steps' speed")
    b.add_argument("--device", help="default: cuda if available, else cpu")
    b.add_argument("--init", help="start from this checkpoint's weights (*.ckpt.safetensors)")
    for q in (a, b):
        q.add_argument("config", help="YAML config file or bundled experiment name")
        q.add_argument("--data-root", help="overrides data.root")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, e.g. data.batch_size=16")
    args = p.parse_args(argv)
    from LesionFactorizerLib.errors import UserError

    try:
        cfg = load_config(args.config, overrides_from(args))
        if args.command == "pack":
            print(json.dumps(pack(cfg, Path(args.out))))
            return 0

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        print(json.dumps(train(cfg, Path(args.pack), Path(args.output_dir), args.minutes, device,
                               init=Path(args.init) if args.init else None)))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
