"""Lightning data module: cases → fold split → preprocessed arrays → random patches / volumes."""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset


from . import folds
from .augment import BG_INDICES, FG_INDICES, train_transforms
from .config import TrainConfig, input_names
from LesionFactorizerLib.datasets import Case, discover

from .preprocess import VERSION as PREPROCESS_VERSION
from .preprocess import load_case


class CaseStore:
    """Preprocessed arrays of a list of cases, kept in memory, in ``.npy`` files on disk (memory-
    mapped, for data sets larger than RAM), or re-read on every access (``none``)."""

    def __init__(self, cases: Sequence[Case], input_names: list[str], spacing, mode: str = "memory",
                 cache_dir: str | Path | None = None, progress: bool = False, *, task: str):
        self.cases, self.input_names, self.spacing, self.mode = list(cases), input_names, spacing, mode
        self.task = task
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._memory: dict[int, dict] = {}
        if mode == "memory" or mode == "disk":
            it = range(len(self.cases))
            if progress:
                from tqdm import tqdm

                it = tqdm(it, desc="preprocessing", unit="case")
            for i in it:
                if mode == "memory":
                    self._memory[i] = self._load(i)
                else:
                    self._disk_paths(i, create=True)

    def __len__(self) -> int:
        return len(self.cases)

    def _load(self, i: int) -> dict:
        return load_case(self.cases[i], self.input_names, self.spacing, task=self.task)

    def _disk_paths(self, i: int, create: bool = False) -> tuple[Path, Path]:
        case = self.cases[i]
        # everything the arrays depend on: files, label conversion, spacing, inputs (their order and
        # so the reference), task, and the preprocessing code's version
        label_map = case.label_map if isinstance(case.label_map, str) else sorted(case.label_map.items())
        parts = [PREPROCESS_VERSION, self.task, case.id, {k: (v.path, v.channel) for k, v in case.images.items()},
                 case.label, label_map, self.spacing, self.input_names]
        key = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:12]
        img, lab = self.cache_dir / f"{case.id}-{key}.image.npy", self.cache_dir / f"{case.id}-{key}.label.npy"
        info = self.cache_dir / f"{case.id}-{key}.json"
        if create and not (img.is_file() and lab.is_file() and info.is_file()):
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            d = self._load(i)
            for path, arr in ((img, d["image"]), (lab, d["label"])):
                tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
                np.save(tmp, arr, allow_pickle=False)
                os.replace(tmp, path)
            tmp = info.with_name(info.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"spacing": list(d["spacing"])}), encoding="utf-8")
            os.replace(tmp, info)
        return img, lab

    def get(self, i: int) -> dict:
        if self.mode == "memory":
            return self._memory[i]
        if self.mode == "disk":
            img, lab = self._disk_paths(i, create=True)
            spacing = json.loads(img.with_name(img.name.replace(".image.npy", ".json")).read_text(encoding="utf-8"))["spacing"]
            return {"id": self.cases[i].id, "image": np.load(img, mmap_mode="r", allow_pickle=False),
                    "label": np.load(lab, mmap_mode="r", allow_pickle=False), "spacing": tuple(spacing)}
        return self._load(i)


def draw_seed(seed: int, rank: int, draw: int) -> int:
    return int(np.random.SeedSequence([seed, rank, draw]).generate_state(1)[0])


class DrawSampler(torch.utils.data.Sampler):
    """The training draws of one rank, numbered over the whole run: draw ``n`` is position
    ``n mod length`` of epoch ``n // length``'s shuffled order, augmented with a seed made from
    (seed, rank, n). Each ``__iter__`` (an epoch) starts at draw ``first_draw()`` — the trainer's
    steps × batch size — so a resumed run draws exactly what the uninterrupted run would have,
    whatever loader workers, prefetching or the epoch bookkeeping did before the stop."""

    def __init__(self, length: int, seed: int, rank: int, first_draw):
        self.length, self.seed, self.rank, self.first_draw = length, seed, rank, first_draw

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        start = int(self.first_draw())
        epoch, order = None, None
        for n in range(start, start + self.length):
            e, pos = divmod(n, self.length)
            if e != epoch:
                epoch, order = e, np.random.default_rng([self.seed, self.rank, e]).permutation(self.length)
            yield int(order[pos]), draw_seed(self.seed, self.rank, n)


class PatchDataset(Dataset):
    """Random augmented patches; an "epoch" is ``length`` draws cycling over the cases. Items are
    (index, seed) pairs from :class:`DrawSampler`: the augmentation of a draw depends on its seed
    only, not on which process ran the draws before it."""

    # Bytes of crop indices kept per process (each loader worker keeps its own): 4 bytes per voxel of
    # a case, so a large data set keeps its most recently drawn cases and searches the others anew.
    index_cache_bytes = 2**30

    def __init__(self, store: CaseStore, transform, length: int, patch: Sequence[int] | None = None):
        self.store, self.transform, self.length = store, transform, length
        self.patch = patch
        self._indices: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key) -> dict:
        index, seed = key
        self.transform.set_random_state(seed=seed)
        case = index % len(self.store)
        d = self.store.get(case)
        sample = {"image": np.asarray(d["image"], dtype=np.float32), "label": np.asarray(d["label"], dtype=np.float32)}
        out = self.transform({**sample, **self._crop_indices(case, sample["label"])})
        if isinstance(out, list):  # RandCropByPosNegLabeld yields a list of num_samples=1 dicts
            out = out[0]
        return {"image": torch.as_tensor(out["image"]).float(), "label": torch.as_tensor(out["label"]).to(torch.uint8)}

    def _crop_indices(self, case: int, label: np.ndarray) -> dict:
        """The lesion and background voxel indices the positive/negative crop draws centres from,
        computed once per case instead of on every draw (at 1 mm that search was most of a draw's
        time). They are MONAI's own, so the draws are the same either way. Only for a label that
        needs no padding to the patch size: padding would move the indices."""
        if self.patch is None or any(s < p for s, p in zip(label.shape[1:], self.patch)):
            return {}
        if case in self._indices:
            self._indices.move_to_end(case)
            fg, bg = self._indices[case]
            return {FG_INDICES: fg, BG_INDICES: bg}
        from monai.transforms.utils import map_binary_to_indices

        fg, bg = map_binary_to_indices(label, None, 0.0)
        dtype = np.int32 if label[0].size < 2**31 else np.int64   # half the memory of int64
        fg, bg = np.asarray(fg, dtype=dtype), np.asarray(bg, dtype=dtype)
        self._indices[case] = (fg, bg)
        while sum(a.nbytes + b.nbytes for a, b in self._indices.values()) > self.index_cache_bytes:
            self._indices.popitem(last=False)
        return {FG_INDICES: fg, BG_INDICES: bg}


class VolumeDataset(Dataset):
    def __init__(self, store: CaseStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict:
        d = self.store.get(index)
        return {"image": torch.from_numpy(np.array(d["image"], dtype=np.float32)),
                "label": torch.from_numpy(np.array(d["label"], dtype=np.uint8)), "id": d["id"],
                # (z, y, x) mm, the arrays' axis order, for surface distances
                "spacing": torch.tensor(list(d["spacing"])[::-1], dtype=torch.float64)}


class SegmentationData(L.LightningDataModule):
    def __init__(self, cfg: TrainConfig, fold: int | None, run_dir: str | Path | None = None,
                 progress: bool = False):
        super().__init__()
        self.cfg, self.fold, self.progress = cfg, fold, progress
        self.run_dir = Path(run_dir) if run_dir else None
        self.train_cases: list[Case] = []
        self.val_cases: list[Case] = []
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        d = self.cfg.data
        self.input_names = input_names(self.cfg)
        if d.pack:
            from .packed import load_stores

            self.train_store, self.val_store = load_stores(d.pack, self.cfg, self.fold)
            self.train_cases, self.val_cases = self.train_store.cases, self.val_store.cases
            self._ready = True
            return
        cases = discover(d.format, d.root, self.cfg.task, d.label_map)
        if self.fold is None:
            self.train_cases, self.val_cases = cases, []
        else:
            self.train_cases, self.val_cases = folds.split(cases, self.fold, d.folds, d.fold_seed)
            if d.max_val_cases:
                self.val_cases = self.val_cases[: d.max_val_cases]
        names = self.input_names
        # shared by all folds of an experiment: entries are keyed by case, files and spacing
        cache_dir = d.cache_dir or (self.run_dir.parent / "cache" if self.run_dir else None)
        if d.cache == "disk" and cache_dir is None:
            from LesionFactorizerLib.core.errors import UserError

            raise UserError("data.cache: disk needs data.cache_dir")
        spacing = list(d.spacing) if d.spacing else None
        self.train_store = CaseStore(self.train_cases, names, spacing, d.cache, cache_dir, self.progress,
                                     task=self.cfg.task)
        self.val_store = CaseStore(self.val_cases, names, spacing, d.cache, cache_dir, self.progress,
                                   task=self.cfg.task)
        self._ready = True

    def train_dataloader(self):
        d = self.cfg.data
        trainer = getattr(self, "trainer", None)
        ranks = trainer.world_size if trainer is not None else 1
        # an epoch: every training case once (at least one batch per rank), in whole batches so
        # that steps × batch size counts the draws; the run is counted in steps
        length = max(len(self.train_store), d.batch_size * ranks) // d.batch_size * d.batch_size
        # patch_size is in image (x, y, z) order like model-file metadata; arrays are (z, y, x)
        patch = list(d.patch_size)[::-1]
        ds = PatchDataset(self.train_store, train_transforms(patch, d.pos_fraction, d.augmentation), length,
                          patch if d.pos_fraction is not None else None)
        # the rank is in every draw's seed: all DDP ranks start from the same global seed and would
        # otherwise crop and augment alike
        rank = trainer.global_rank if trainer is not None else 0
        sampler = DrawSampler(length, self.cfg.trainer.seed, rank,
                              lambda: trainer.global_step * d.batch_size if trainer is not None else 0)
        from monai.data import DataLoader

        return DataLoader(ds, batch_size=d.batch_size, sampler=sampler, drop_last=True,
                          num_workers=d.num_workers, persistent_workers=d.num_workers > 0,
                          # a generator of its own: MONAI's loader draws a seed from it, which would
                          # otherwise come from (and advance) the global torch stream
                          pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        if not self.val_cases:
            return []
        return torch.utils.data.DataLoader(VolumeDataset(self.val_store), batch_size=1, shuffle=False,
                                           num_workers=min(self.cfg.data.num_workers, 2))
