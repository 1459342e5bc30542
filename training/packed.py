"""Packed data sets: every case of a config's fold split preprocessed once into one ``.npz``, a data
source of the ordinary trainer for hosts that lack SimpleITK or the raw files (a rented GPU).

``pack`` (where the library and the data are)
    Every case of the fold split goes through :func:`preprocess.load_case` — the arrays
    ``lesion-factorizer train`` would use, i.e. exactly what inference sees — and is stored in one
    ``.npz``: images quantised to uint8 in steps of 1/20 of a z-score unit (error ≤ 0.025 σ, far
    below the images' noise; half the size of fp16 so more cases travel), labels as uint8, and what
    the arrays depend on (task, inputs, spacing, split, preprocessing version).

Training from a pack is ``lesion-factorizer train CONFIG --pack FILE`` (``data.pack``): the same
Lightning trainer, loss, MONAI patch sampling and augmentation, sliding-window validation (HD95
included, ``trainer.sw_overlap`` honoured), checkpoints and resume as from the files; only where
the preprocessed arrays come from differs (:class:`PackStore` instead of ``data.CaseStore``). The
host needs torch, Lightning and MONAI (``pip install monai lightning``), not SimpleITK or nilearn.

    python -m LesionFactorizerLib.training.packed demo-ms-new-gpu --data-root DATA --out pack.npz
    lesion-factorizer train demo-ms-new-gpu --pack pack.npz --output-dir runs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .config import TrainConfig, input_names, load_config

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
            arrays[f"{split}{i}_spacing"] = np.asarray(c["spacing"], np.float64)     # (x, y, z) mm
    ids = {"train": [c.id for c in train_cases], "val": [c.id for c in val_cases]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays, meta=np.asarray(json.dumps({**pack_meta(cfg, fold), "ids": ids})))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"pack": str(out), "train": len(train_cases), "val": len(val_cases), "inputs": names,
            "clipped_fraction": clipped / max(voxels, 1), "bytes": out.stat().st_size}


def pack_meta(cfg: TrainConfig, fold: int | None) -> dict:
    """What the packed arrays depend on; training refuses a pack made for something else."""
    from .preprocess import VERSION

    d = cfg.data
    return {"task": cfg.task, "inputs": input_names(cfg), "spacing": d.spacing, "folds": d.folds,
            "fold_seed": d.fold_seed, "fold": fold, "max_val_cases": d.max_val_cases,
            "preprocess_version": VERSION}


class PackStore:
    """The training or validation cases of a pack, with ``data.CaseStore``'s interface (``len``,
    ``get(i)`` → id, float32 image, uint8 label, spacing (x, y, z) mm)."""

    def __init__(self, arrays, split: str, ids: list[str]):
        self.cases = []
        for i, case_id in enumerate(ids):
            # (q − 80) / 20: exact zeros stay exact (the pipeline's background is 0)
            image = (arrays[f"{split}{i}_image"].astype(np.float32) - Q_ZERO) / Q_SCALE
            self.cases.append({"id": case_id, "image": image, "label": arrays[f"{split}{i}_label"],
                               "spacing": tuple(float(s) for s in arrays[f"{split}{i}_spacing"])})

    def __len__(self) -> int:
        return len(self.cases)

    def get(self, i: int) -> dict:
        return self.cases[i]


def load_stores(path: str | Path, cfg: TrainConfig, fold: int | None) -> tuple[PackStore, PackStore]:
    """(training, validation) stores of pack ``path``, which must have been made for ``cfg``'s task,
    inputs, spacing and this fold's split."""
    from LesionFactorizerLib.core.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"pack {path} not found; make it with 'python -m LesionFactorizerLib.training.packed "
                        f"CONFIG --out {path}'")
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"])) if "meta" in z.files else None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read pack {path}: {exc}") from None
    with z:
        if meta is None:
            raise UserError(f"{path} is not a pack written by 'LesionFactorizerLib.training.packed'")
        want = pack_meta(cfg, fold)
        differ = [k for k in want if meta.get(k) != want[k]]
        if differ:
            raise UserError(f"pack {path} was made for {', '.join(f'{k}={meta.get(k)}' for k in differ)}, "
                            f"the config asks for {', '.join(f'{k}={want[k]}' for k in differ)}; pack again")
        train, val = PackStore(z, "train", meta["ids"]["train"]), PackStore(z, "val", meta["ids"]["val"])
    if not len(train):
        raise UserError(f"{path} holds no training case")
    return train, val


def main(argv: list[str] | None = None) -> int:
    from LesionFactorizerLib.core.errors import UserError

    from .cli_args import overrides_from

    p = argparse.ArgumentParser(prog="python -m LesionFactorizerLib.training.packed",
                                description="Preprocess a config's fold split into one pack (.npz) for "
                                "'lesion-factorizer train CONFIG --pack FILE'.")
    p.add_argument("config", help="YAML config file or bundled experiment name")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--fold", type=int, default=0, help="validation fold (default 0)")
    p.add_argument("--data-root", help="overrides data.root")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, overrides_from(args))
        print(json.dumps(pack(cfg, Path(args.out), args.fold)))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
