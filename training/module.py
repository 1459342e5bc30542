"""The Lightning module: one network, its loss, optimiser/schedule and sliding-window validation."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.evaluation import detect_lesions, dice, hausdorff95
from LesionFactorizerLib.tasks import get_task

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
        lc = self.cfg.loss
        self.criterion = DeepSupervisionLoss(SegmentationLoss(lc.kind, lc.smooth, lc.squared, lc.focal_gamma),
                                             lc.deep_supervision)
        self.regions = {r.name: tuple(r.labels) for r in self.task.regions} or \
            {label.name: (label.value,) for label in self.task.labels}
        self._val_scores: list[dict[str, float]] = []

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
        label = batch["label"][:, 0]
        for b in range(label.shape[0]):
            spacing = tuple(float(s) for s in batch["spacing"][b])
            scores = {}
            for name, values in self.regions.items():
                ref = torch.isin(label[b], torch.tensor(values, device=label.device)).cpu().numpy()
                pred = masks[name][b].cpu().numpy()
                scores[f"dice_{name}"] = dice(pred, ref)
                scores[f"hd95_{name}"] = hausdorff95(pred, ref, spacing)  # NaN if one side is empty
            if len(self.task.labels) == 1:  # lesion tasks: detection with the task's lesion rules
                pp = self.task.postprocessing
                (only,) = self.regions
                det = detect_lesions(masks[only][b].cpu().numpy(), (label[b] > 0).cpu().numpy(), spacing,
                                     pp.connectivity, pp.min_lesion_mm3)
                scores["lesion_f1"] = det.f1
            self._val_scores.append(scores)

    def on_validation_epoch_end(self):
        if not self._val_scores:
            return
        keys = list(self._val_scores[0])
        # nan-mean: HD95 / F1 are undefined for some cases (documented in evaluation/__init__.py)
        means = {k: float(np.nanmean([s[k] for s in self._val_scores])) if any(
            np.isfinite(s[k]) for s in self._val_scores) else float("nan") for k in keys}
        for k, v in means.items():
            self.log(f"val/{k}", v, sync_dist=True)
        self.log("val/dice", float(np.mean([means[f"dice_{n}"] for n in self.regions])), prog_bar=True,
                 sync_dist=True)
        self._val_scores.clear()

    def configure_optimizers(self):
        o = self.cfg.optim
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        opt = cls(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        if o.scheduler == "warmup_cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(o.warmup_steps, self.cfg.trainer.max_steps))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if o.scheduler == "plateau":
            # chapter 8: divide the rate by 1/factor when validation Dice stalls for `patience` checks
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=o.plateau_factor,
                                                               patience=o.plateau_patience)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/dice",
                                                       "interval": "step",
                                                       "frequency": self.cfg.trainer.val_every,
                                                       "strict": False}}
        return opt
