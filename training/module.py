"""The Lightning module: one network, its loss, optimiser/schedule and sliding-window validation."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.evaluation import detect_lesions, dice, hausdorff95
from LesionFactorizerLib.core.tasks import get_task

from .config import TrainConfig, from_dict
from .losses import DeepSupervisionLoss, SegmentationLoss
from .schedules import WarmupCosine
from .targets import channel_labels, decode_regions, encode


def output_mode(cfg: TrainConfig) -> str:
    """How this experiment's outputs become labels (stored in the exported model file)."""
    return "argmax" if cfg.loss.kind == "dice_softmax" else get_task(cfg.task).postprocessing.mode


def build_network(cfg: TrainConfig):
    from LesionFactorizerLib.presets import build_model

    try:
        return build_model(cfg.model.preset, **cfg.model.overrides)
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot build model {cfg.model.preset!r} with overrides {cfg.model.overrides}: {exc}") from None


def scored_regions(task) -> dict[str, tuple[int, ...]]:
    """Name → label values validated: the task's regions (tumor: WT, TC, ET), else its labels."""
    return {r.name: tuple(r.labels) for r in task.regions} or {lb.name: (lb.value,) for lb in task.labels}


def case_scores(masks: dict[str, np.ndarray], label: np.ndarray, regions: dict[str, tuple[int, ...]], task,
                spacing, hd95: bool = True) -> dict[str, float]:
    """Validation scores of one case: Dice (and HD95, NaN if one side is empty) per region, and the
    lesion-wise F1 of the task's detection rules for single-label lesion tasks. ``masks``: region →
    boolean array; ``label``: the integer label array."""
    scores = {}
    for name, values in regions.items():
        ref = np.isin(label, values)
        scores[f"dice_{name}"] = dice(masks[name], ref)
        if hd95:
            scores[f"hd95_{name}"] = hausdorff95(masks[name], ref, spacing)
    if len(task.labels) == 1:
        pp = task.postprocessing
        (only,) = regions
        scores["lesion_f1"] = detect_lesions(masks[only], label > 0, spacing, pp.connectivity, pp.min_lesion_mm3).f1
    return scores


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key nan-mean: HD95 / F1 are undefined for some cases (documented in evaluation/__init__.py)."""
    return {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows) else float("nan")
            for k in rows[0]}


class SegmentationModule(L.LightningModule):
    def __init__(self, config: dict, fold: int | None = None):
        super().__init__()
        # Plain data only: the checkpoint stays loadable without pickle (see checkpoint_io).
        self.save_hyperparameters({"config": config, "fold": fold})
        self.cfg = from_dict(config)
        self.task = get_task(self.cfg.task)
        self.mode = output_mode(self.cfg)
        self.channels = channel_labels(self.task, self.mode)
        self.model = build_network(self.cfg)
        out_ch = self.model.config["kwargs"].get("out_channels")
        if out_ch is not None and out_ch != len(self.channels):
            raise UserError(f"model {self.cfg.model.preset!r} has {out_ch} output channels but task "
                            f"{self.cfg.task!r} with '{self.mode}' outputs needs {len(self.channels)} "
                            f"({', '.join(n for n, _ in self.channels)}); set model.overrides.out_channels")
        self.criterion = build_loss(self.cfg)
        self.regions = scored_regions(self.task)
        self._val_scores: dict[str, dict[str, float]] = {}     # case id → scores
        self.plateau = None            # the chapter-8 schedule, stepped once per validation
        self._plateau_state: dict | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        outputs = self.model(batch["image"], all_heads=True)
        target = encode(batch["label"], self.channels)
        loss = self.criterion(outputs, target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        from monai.inferers import sliding_window_inference

        t = self.cfg.trainer
        logits = sliding_window_inference(batch["image"], roi_size=list(self.cfg.data.patch_size)[::-1],
                                          sw_batch_size=t.sw_batch_size, predictor=self.model,
                                          overlap=t.sw_overlap, mode="constant")
        masks = decode_regions(logits, self.channels, self.mode, self.regions)
        label = batch["label"][:, 0].cpu().numpy()
        for b in range(label.shape[0]):
            spacing = tuple(float(s) for s in batch["spacing"][b])
            self._val_scores[batch["id"][b]] = case_scores({n: m[b].cpu().numpy() for n, m in masks.items()},
                                                           label[b], self.regions, self.task, spacing)

    def on_validation_epoch_end(self):
        scores = _gather_cases(self._val_scores)
        self._val_scores = {}
        if not scores:
            return
        # every rank holds every case once now, so the means are the cohort's, equal on all ranks
        means = mean_scores(list(scores.values()))
        for k, v in means.items():
            self.log(f"val/{k}", v, sync_dist=True)
        val_dice = float(np.mean([means[f"dice_{n}"] for n in self.regions]))
        self.log("val/dice", val_dice, prog_bar=True, sync_dist=True)
        self.log("val/cases", float(len(scores)), sync_dist=True)
        if self.plateau is not None and not self.trainer.sanity_checking:
            self.plateau.step(val_dice)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.plateau is not None:
            checkpoint["plateau_scheduler"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._plateau_state = checkpoint.get("plateau_scheduler")
        if self.plateau is not None and self._plateau_state:
            self.plateau.load_state_dict(self._plateau_state)

    def configure_optimizers(self):
        o = self.cfg.optim
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        opt = cls(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        if o.scheduler == "warmup_cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(o.warmup_steps, self.cfg.trainer.max_steps))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if o.scheduler == "plateau":
            # chapter 8: divide the rate by 1/factor when validation Dice stalls for `patience`
            # validations. Stepped by on_validation_epoch_end, not handed to Lightning: Lightning
            # counts a step scheduler's `frequency` against the batch index within an epoch, which
            # never reaches val_every when an epoch has fewer batches (BraTS 2020: 295 < 298).
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=o.plateau_factor,
                                                                      patience=o.plateau_patience)
            if self._plateau_state:
                self.plateau.load_state_dict(self._plateau_state)
        return opt


def build_loss(cfg: TrainConfig) -> DeepSupervisionLoss:
    lc = cfg.loss
    return DeepSupervisionLoss(SegmentationLoss(lc.kind, lc.smooth, lc.squared, lc.focal_gamma, lc.dice_per_channel),
                               lc.deep_supervision)


def _gather_cases(scores: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Every rank's per-case scores, each case once. Under DDP the validation sampler pads the
    case list so that every rank gets as many cases (duplicates), and each rank sees only its
    share: means are taken over the gathered cases, never averaged per rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return scores
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, scores)
    merged: dict[str, dict[str, float]] = {}
    for part in parts:
        merged.update(part)
    return dict(sorted(merged.items()))
