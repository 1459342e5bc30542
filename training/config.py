"""Training configuration: YAML (``safe_load``) mapped onto typed dataclasses.

A config file may name a ``base:`` file (relative to itself, or a bundled config name); the
two are deep-merged (mappings merge key by key, everything else is replaced), so each thesis
experiment is a few lines on top of its task's base. Unknown keys are errors, not silently
ignored, because a misspelt key would otherwise train the wrong experiment for days.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from LesionFactorizerLib.core.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a string; YAML 1.2 — and every person
    writing a learning rate — reads it as a number. Quoted values stay strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def yaml_load(text: str):
    """Safe YAML with 1.2 floats: configs and ``--set`` values."""
    return yaml.load(text, Loader=_Loader)


@dataclass
class AffineAug:
    prob: float = 0.15
    rotate_deg: float = 30.0      # U(-r, r) per axis
    scale: float = 0.3            # factor U(1-s, 1+s)


@dataclass
class FlipAug:
    prob: float = 0.5
    axes: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class NoiseAug:
    """Additive Gaussian noise; give one of ``variance`` (variance ~ U(0, variance), thesis 7.6.1)
    or ``std`` (std ~ U(0, std), MONAI's RandGaussianNoise, thesis 8.3.1)."""
    prob: float = 0.15
    variance: float | None = 0.1
    std: float | None = None


@dataclass
class SmoothAug:
    prob: float = 0.15
    sigma: list[float] = field(default_factory=lambda: [0.5, 1.5])


@dataclass
class ScaleIntensityAug:
    prob: float = 0.15
    factor: float = 0.3           # v ← v·(1+U(-f, f))


@dataclass
class ShiftIntensityAug:
    prob: float = 0.15
    offset: float = 0.1


@dataclass
class BiasFieldAug:
    prob: float = 0.15
    degree: int = 3
    coeff: list[float] = field(default_factory=lambda: [0.0, 0.1])


@dataclass
class ContrastAug:
    prob: float = 0.15
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])


@dataclass
class AugmentationConfig:
    """Thesis appendix 7.6.1 order: affine, flip, noise, smooth, scale, shift, (bias field,) contrast.
    Set an entry to ``null`` to switch it off."""

    affine: AffineAug | None = field(default_factory=AffineAug)
    flip: FlipAug | None = field(default_factory=FlipAug)
    noise: NoiseAug | None = field(default_factory=NoiseAug)
    smooth: SmoothAug | None = field(default_factory=SmoothAug)
    scale_intensity: ScaleIntensityAug | None = field(default_factory=ScaleIntensityAug)
    shift_intensity: ShiftIntensityAug | None = field(default_factory=ShiftIntensityAug)
    bias_field: BiasFieldAug | None = None
    contrast: ContrastAug | None = field(default_factory=ContrastAug)


@dataclass
class DataConfig:
    format: str = "datalist"      # msd-task01 | brats | isles22 | msseg2 | datalist
    root: str = ""                # data-set folder (or the datalist file for "datalist")
    pack: str | None = None       # a pack (training/packed.py) to read the preprocessed cases from instead
    label_map: dict[int, int] | None = None   # datalist only: raw → task label value; null = the task's values
    inputs: list[str] | None = None           # network inputs in order; null = the task's required inputs
    spacing: list[float] | None = None        # mm, (x, y, z); null keeps the native grid
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])   # voxels, (x, y, z)
    batch_size: int = 1
    pos_fraction: float | None = None         # share of foreground-centred crops; null = uniform
    folds: int = 5
    fold_seed: int = 42
    num_workers: int = 4
    cache: str = "memory"                     # memory | disk | none
    cache_dir: str | None = None              # for cache: disk (default: <output_dir>/<name>/cache)
    max_val_cases: int | None = None
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class ModelConfig:
    preset: str = "swin-factorizer-brats"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    kind: str = "dice_bce"        # dice_bce | dice_focal | dice_softmax
    deep_supervision: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    focal_gamma: float = 2.0
    smooth: float = 1e-5          # soft-Dice smoothing (numerator and denominator)
    squared: bool = True          # ‖P‖² in the Dice denominator (thesis eq. 7.17)
    dice_per_channel: bool = True  # Dice per sample and channel (eq. 7.17); false: over all channels (eq. 8.4)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"      # adamw | adam
    lr: float = 1e-4
    weight_decay: float = 1e-2
    scheduler: str = "warmup_cosine"   # warmup_cosine | plateau | constant
    warmup_steps: int = 2000
    plateau_factor: float = 0.2
    plateau_patience: int = 5     # validations without improvement


@dataclass
class TrainerConfig:
    max_steps: int = 100_000
    val_every: int = 2000         # steps between validations
    checkpoint_every: int = 500   # steps between saves of the latest state (checkpoints/last); 0 = off
    accelerator: str = "auto"     # auto | cpu | gpu | mps
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"        # Lightning strategy flag, e.g. ddp
    precision: str = "auto"       # auto = bf16-mixed on CUDA, 32-true elsewhere
    seed: int = 42
    sw_overlap: float = 0.5
    sw_batch_size: int = 1
    log_every: int = 50
    output_dir: str = "runs"
    progress_bar: bool = True


@dataclass
class TrainConfig:
    name: str
    task: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    source: str = ""              # thesis section / reference the experiment reproduces

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def resolve_config_path(name: str | Path) -> Path:
    """A path, or the name of a bundled config (``swin-factorizer-brats`` or ``…​.yaml``)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    bundled = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml") if not q.stem.endswith("-base")))
    raise UserError(f"config {str(name)!r} not found; give a YAML path or a bundled config: {bundled}")


def bundled_configs() -> list[tuple[str, str, str, str]]:
    """(name, task, model preset, first line of the description) of every bundled experiment
    (``*-base`` files are building blocks, not experiments)."""
    out = []
    for p in sorted(CONFIG_DIR.glob("*.yaml")):
        if p.stem.endswith("-base"):
            continue
        raw = load_raw(p)
        desc = str(raw.get("description") or "").strip().splitlines()
        out.append((raw["name"], str(raw.get("task", "")), str(raw.get("model", {}).get("preset", "")),
                    desc[0] if desc else ""))
    return out


def load_raw(path: str | Path, _seen: tuple = ()) -> dict:
    path = resolve_config_path(path).resolve()
    if path in _seen:
        raise UserError(f"config {path} includes itself through 'base:'")
    try:
        raw = yaml_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config {path} is not valid YAML ({exc.__class__.__name__}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {path} must be a mapping of keys to values")
    base = raw.pop("base", None)
    own_name = raw.get("name")
    if base:
        bpath = (path.parent / base) if (path.parent / base).is_file() else base
        raw = deep_merge(load_raw(bpath, _seen + (path,)), raw)
    raw["name"] = own_name or path.stem  # a run is named after the experiment file, not its base
    return raw


def _build(cls, data: Any, where: str):
    """Instantiate dataclass ``cls`` from plain data, recursively, rejecting unknown keys."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise UserError(f"config key '{where}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise UserError(f"unknown config key(s) {sorted(unknown)} in '{where or 'top level'}'; "
                        f"valid keys: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        t = fields[k].type
        sub = _dataclass_type(t)
        kwargs[k] = _build(sub, v, f"{where}.{k}".strip(".")) if sub is not None else v
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"config section '{where or 'top level'}': {exc}") from None


_DATACLASSES = {c.__name__: c for c in (AffineAug, FlipAug, NoiseAug, SmoothAug, ScaleIntensityAug,
                                         ShiftIntensityAug, BiasFieldAug, ContrastAug, AugmentationConfig,
                                         DataConfig, ModelConfig, LossConfig, OptimConfig, TrainerConfig)}


def _dataclass_type(annotation: Any):
    name = str(annotation).split("|")[0].strip()
    return _DATACLASSES.get(name)


def from_dict(raw: dict) -> TrainConfig:
    raw = copy.deepcopy(raw)
    for key in ("name", "task"):
        if key not in raw:
            raise UserError(f"config has no '{key}'; add e.g. 'task: tumor' (or a 'base:' that sets it)")
    cfg = _build(TrainConfig, raw, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    raw = load_raw(path)
    if overrides:
        raw = deep_merge(raw, overrides)
    return from_dict(raw)


def validate(cfg: TrainConfig) -> None:
    from LesionFactorizerLib.core.tasks import get_task

    from LesionFactorizerLib.datasets import FORMATS

    get_task(cfg.task)
    d = cfg.data
    if d.format not in FORMATS:
        raise UserError(f"data.format {d.format!r} unknown; use {', '.join(FORMATS)}")
    if len(d.patch_size) != 3 or min(d.patch_size) < 1:
        raise UserError(f"data.patch_size must be three positive integers, got {d.patch_size}")
    if d.spacing is not None and (len(d.spacing) != 3 or min(d.spacing) <= 0):
        raise UserError(f"data.spacing must be null or three positive numbers (mm), got {d.spacing}")
    if d.pos_fraction is not None and not 0 <= d.pos_fraction <= 1:
        raise UserError(f"data.pos_fraction must be in [0, 1] or null, got {d.pos_fraction}")
    if d.augmentation.noise and (d.augmentation.noise.std is None) == (d.augmentation.noise.variance is None):
        raise UserError("data.augmentation.noise: give exactly one of variance (~U(0, variance)) and std "
                        "(~U(0, std)); set the other to null")
    if d.cache not in ("memory", "disk", "none"):
        raise UserError(f"data.cache must be memory, disk or none, got {d.cache!r}")
    if cfg.loss.kind not in ("dice_bce", "dice_focal", "dice_softmax"):
        raise UserError(f"loss.kind {cfg.loss.kind!r} unknown; use dice_bce, dice_focal or dice_softmax")
    if not cfg.loss.deep_supervision or any(w < 0 for w in cfg.loss.deep_supervision):
        raise UserError("loss.deep_supervision must list non-negative weights, e.g. [1, 0.5, 0.25]")
    if cfg.optim.optimizer not in ("adamw", "adam"):
        raise UserError(f"optim.optimizer must be adamw or adam, got {cfg.optim.optimizer!r}")
    if cfg.optim.scheduler not in ("warmup_cosine", "plateau", "constant"):
        raise UserError(f"optim.scheduler must be warmup_cosine, plateau or constant, got {cfg.optim.scheduler!r}")
    if cfg.trainer.max_steps < 1 or cfg.trainer.val_every < 1:
        raise UserError("trainer.max_steps and trainer.val_every must be positive")
    if cfg.trainer.checkpoint_every < 0:
        raise UserError("trainer.checkpoint_every must be 0 (off) or a number of steps")


def input_names(cfg: TrainConfig) -> list[str]:
    """The network's inputs in order: ``data.inputs`` or the task's required inputs."""
    from LesionFactorizerLib.core.tasks import get_task

    task = get_task(cfg.task)
    names = list(cfg.data.inputs) if cfg.data.inputs else task.required_inputs
    unknown = [n for n in names if n not in task.input_names]
    missing = [n for n in task.required_inputs if n not in names]
    if unknown or missing:
        raise UserError(f"data.inputs {names} must be inputs of task {cfg.task!r} ({', '.join(task.input_names)}) "
                        f"and include {', '.join(task.required_inputs)}")
    return names
