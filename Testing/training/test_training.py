"""Training building blocks: configs, losses (against MONAI), deep supervision, schedule, target
encoding and pickle-free checkpoints."""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from monai.losses import DiceCELoss, DiceLoss, FocalLoss

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.presets import PRESETS
from LesionFactorizerLib.core.tasks import get_task
from LesionFactorizerLib.training import checkpoint_io
from LesionFactorizerLib.training.config import CONFIG_DIR, input_names, load_config
from LesionFactorizerLib.training.losses import DeepSupervisionLoss, SegmentationLoss, SoftDice, sigmoid_focal
from LesionFactorizerLib.training.module import output_mode
from LesionFactorizerLib.training.schedules import WarmupCosine
from LesionFactorizerLib.training.targets import channel_labels, decode_regions, encode

EXPERIMENTS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.endswith("-base"))
# Thesis experiments reproduce a thesis result with the presets' settings; "demo-*" (the bundled
# CPU demo models) and "cpu-quick-*" (smoke runs) are deliberately small and are not held to that.
NOT_THESIS = ("demo-", "cpu-quick-")
THESIS_EXPERIMENTS = [n for n in EXPERIMENTS if not n.startswith(NOT_THESIS)]


def test_every_thesis_experiment_has_a_config():
    want = {f"{m}-factorizer-{d}" for m in ("swin", "local", "global") for d in ("brats", "isles")}
    want |= {f"{m}-msseg2" for m in ("unet", "resunet", "preunet")}
    want |= {"resunet-brats2020", "lowrank-resunet-brats2020"}
    assert want <= set(THESIS_EXPERIMENTS)


@pytest.mark.parametrize("name", THESIS_EXPERIMENTS)
@pytest.mark.slow
def test_bundled_configs_are_consistent_with_presets_and_tasks(name):
    cfg = load_config(name)
    assert cfg.name == name
    preset = PRESETS[cfg.model.preset]
    kwargs = {**preset.kwargs, **cfg.model.overrides}
    task = get_task(cfg.task)
    assert kwargs["in_channels"] == len(input_names(cfg))
    assert kwargs["out_channels"] == len(channel_labels(task, output_mode(cfg)))
    # thesis experiments use the presets' patch sizes (the training patch is the inference window)
    assert tuple(cfg.data.patch_size) == tuple(preset.patch_size)


def test_config_inheritance_overrides_and_unknown_keys(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump({"base": str(CONFIG_DIR / "ms-new-base.yaml"), "model": {"preset": "unet-msseg2"},
                                 "optim": {"lr": 3e-4}}), encoding="utf-8")
    cfg = load_config(p, {"trainer": {"max_steps": 7}})
    assert cfg.name == "exp" and cfg.optim.lr == 3e-4 and cfg.optim.weight_decay == 1e-2  # merged, not replaced
    assert cfg.trainer.max_steps == 7 and cfg.loss.kind == "dice_focal"
    assert cfg.data.augmentation.bias_field.degree == 3 and cfg.data.augmentation.flip.prob == 0.5
    p.write_text(yaml.safe_dump({"base": str(CONFIG_DIR / "ms-new-base.yaml"), "optim": {"learning_rate": 1}}), encoding="utf-8")
    with pytest.raises(UserError, match="learning_rate"):
        load_config(p)
    with pytest.raises(UserError, match="not found"):
        load_config("no-such-experiment")
    p.write_text("task: tumor\nloss: {kind: dice_ce}\n", encoding="utf-8")
    with pytest.raises(UserError, match="dice_ce"):
        load_config(p)
    p.write_text("!!python/object/apply:os.system ['echo hi']\n", encoding="utf-8")   # safe_load refuses code tags
    with pytest.raises(UserError, match="YAML"):
        load_config(p)


def test_loss_is_dice_plus_binary_ce_not_monais_softmax_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6)
    target = (torch.rand(2, 3, 6, 6, 6) > 0.6).float()
    ours = SegmentationLoss("dice_bce")(logits, target)
    dice = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert ours.item() == pytest.approx((dice + bce).item(), rel=1e-5)
    # MONAI's DiceCELoss(sigmoid=True) uses a softmax CE for >1 channel: a different number
    monai_dce = DiceCELoss(sigmoid=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, target)
    assert abs(monai_dce.item() - ours.item()) > 1e-3
    # one channel: the same as MONAI's (which uses BCE there)
    one = SegmentationLoss("dice_bce")(logits[:, :1], target[:, :1])
    monai_one = DiceCELoss(sigmoid=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits[:, :1], target[:, :1])
    assert one.item() == pytest.approx(monai_one.item(), rel=1e-5)


@pytest.mark.slow
def test_focal_and_softmax_dice_match_monai():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 5, 5, 5)
    target = (torch.rand(2, 1, 5, 5, 5) > 0.8).float()
    assert sigmoid_focal(logits, target, 2.0).item() == pytest.approx(
        FocalLoss(gamma=2.0, use_softmax=False)(logits, target).item(), rel=1e-5)
    df = SegmentationLoss("dice_focal")(logits, target)
    assert df.item() == pytest.approx(
        (DiceLoss(sigmoid=True, squared_pred=True)(logits, target) + FocalLoss(gamma=2.0)(logits, target)).item(),
        rel=1e-5)
    logits4 = torch.randn(2, 4, 5, 5, 5)
    onehot = F.one_hot(torch.randint(0, 4, (2, 5, 5, 5)), 4).permute(0, 4, 1, 2, 3).float()
    assert SoftDice("softmax", smooth=1.0)(logits4, onehot).item() == pytest.approx(
        DiceLoss(softmax=True, squared_pred=True, smooth_nr=1.0, smooth_dr=1.0)(logits4, onehot).item(), rel=1e-5)


def test_deep_supervision_weights_and_nearest_targets():
    base = SegmentationLoss("dice_bce")
    ds = DeepSupervisionLoss(base, [1.0, 0.5, 0.25])
    torch.manual_seed(2)
    target = (torch.rand(1, 1, 9, 9, 9) > 0.5).float()
    outs = [torch.randn(1, 1, 9, 9, 9), torch.randn(1, 1, 5, 5, 5), torch.randn(1, 1, 3, 3, 3)]
    expected = sum(w / 1.75 * base(o, F.interpolate(target, size=o.shape[2:], mode="nearest"))
                   for w, o in zip([1.0, 0.5, 0.25], outs))
    assert ds(outs, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # a single head (chapter-8 network) gets weight 1
    assert ds([outs[0]], target).item() == pytest.approx(base(outs[0], target).item(), rel=1e-6)
    # downsampled targets stay binary
    t = F.interpolate(target, size=(5, 5, 5), mode="nearest")
    assert set(t.unique().tolist()) <= {0.0, 1.0}


def test_warmup_cosine_schedule():
    s = WarmupCosine(2000, 100_000)
    assert s(0) == 0 and s(1000) == pytest.approx(0.5) and s(2000) == pytest.approx(1.0)
    assert s(51_000) == pytest.approx(0.5) and s(100_000) == pytest.approx(0.0, abs=1e-12)
    assert s(200_000) == pytest.approx(0.0, abs=1e-12)
    assert all(s(k) >= s(k + 500) for k in range(2000, 100_000, 500))


def test_targets_encode_and_decode_nested_regions():
    tumor = get_task("tumor")
    lab = torch.tensor([0, 1, 2, 3]).view(1, 1, 4, 1, 1)
    ch = channel_labels(tumor)
    assert [n for n, _ in ch] == ["ET", "TC", "WT"]
    t = encode(lab, ch)[0, :, :, 0, 0]
    assert t.tolist() == [[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]]   # ET ⊂ TC ⊂ WT
    regions = {r.name: tuple(r.labels) for r in tumor.regions}
    # inconsistent logits: ET on where WT is off → removed by nesting
    logits = torch.tensor([[5.0, 5.0], [5.0, -5.0], [5.0, -5.0]]).view(1, 3, 2, 1, 1)
    m = decode_regions(logits, ch, "hierarchical", regions)
    assert m["ET"].flatten().tolist() == [True, False] and m["WT"].flatten().tolist() == [True, False]
    soft = channel_labels(tumor, "argmax")
    assert [n for n, _ in soft] == ["background", "NCR", "ED", "ET"]
    oh = encode(lab, soft)[0, :, :, 0, 0]
    assert oh.argmax(0).tolist() == [0, 1, 2, 3]
    m = decode_regions(encode(lab, soft) * 10, soft, "argmax", regions)
    assert m["TC"].flatten().tolist() == [False, True, False, True]


def test_checkpoint_round_trip_without_pickle(tmp_path):
    ckpt = {"state_dict": {"model.w": torch.randn(3, 2), "model.b": torch.arange(4)},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                                  "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0], "foreach": None}]}],
            "global_step": 12, "best": float("inf"), "hyper_parameters": {"config": {"a": [1, 2]}, "fold": None}}
    path = tmp_path / f"x{checkpoint_io.SUFFIX}"
    checkpoint_io.save_checkpoint_file(ckpt, path)
    back = checkpoint_io.load_checkpoint_file(path)
    assert torch.equal(back["state_dict"]["model.w"], ckpt["state_dict"]["model.w"])
    assert back["optimizer_states"][0]["state"][0]["step"].item() == 3.0          # int keys survive
    assert back["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples survive
    assert back["best"] == math.inf and back["global_step"] == 12 and back["hyper_parameters"]["fold"] is None
    with pytest.raises(TypeError, match="without pickle"):
        checkpoint_io.save_checkpoint_file({"obj": object()}, tmp_path / "y.ckpt.safetensors")
    assert not (tmp_path / "y.ckpt.safetensors").exists()
    data = path.read_bytes()
    (tmp_path / "cut.ckpt.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        checkpoint_io.load_checkpoint_file(tmp_path / "cut.ckpt.safetensors")


def test_failed_checkpoint_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / f"last{checkpoint_io.SUFFIX}"
    target.mkdir()                          # the final rename cannot replace a non-empty folder
    (target / "keep").write_text("x", encoding="utf-8")
    with pytest.raises(OSError):
        checkpoint_io.save_checkpoint_file({"w": torch.ones(2)}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]   # no last….tmp left behind


def test_list_configs_prints_the_bundled_experiments_and_exits(capsys):
    import argparse

    from LesionFactorizerLib.training.cli_args import add_common

    parser = argparse.ArgumentParser(prog="train")
    add_common(parser)
    assert "--list-configs" in parser.format_help()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--list-configs"])            # no CONFIG needed, like --version
    assert exit_info.value.code == 0
    listed = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()}
    assert set(THESIS_EXPERIMENTS) <= set(listed) and not any(n.endswith("-base") for n in listed)
    assert listed["unet-msseg2"] == ["ms-new", "unet-msseg2"]


def test_set_reads_exponent_numbers_as_numbers():
    """YAML 1.1 reads 1e-3 as a string; --set optim.lr=1e-3 must still mean the number."""
    import argparse

    from LesionFactorizerLib.training.cli_args import add_common, overrides_from

    parser = argparse.ArgumentParser()
    add_common(parser)
    args = parser.parse_args(["x.yaml", "--set", "optim.lr=1e-3", "--set", "model.preset=2e-unet",
                              "--set", "data.patch_size=[8,8,8]"])
    o = overrides_from(args)
    assert o["optim"]["lr"] == 0.001 and o["model"]["preset"] == "2e-unet" and o["data"]["patch_size"] == [8, 8, 8]


def test_config_files_read_exponent_numbers_as_numbers(tmp_path):
    from LesionFactorizerLib.training.config import load_config

    path = tmp_path / "exp.yaml"
    path.write_text("base: stroke-base.yaml\noptim: {lr: 1e-3, weight_decay: 1e-5}\ndescription: \"1e5\"\n",
                    encoding="utf-8")
    cfg = load_config(path)
    assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 1e-5 and cfg.description == "1e5"


class _ArrayStore:
    def __init__(self, cases):
        self.cases = cases

    def __len__(self):
        return len(self.cases)

    def get(self, i):
        return self.cases[i]


@pytest.mark.parametrize("shape, budget", [((20, 18, 16), 2**30), ((20, 18, 6), 2**30),   # the second needs padding
                                           ((20, 18, 16), 30000)])   # room for one case's indices only
def test_lesion_crops_drawn_with_cached_indices_equal_monais_own_draws(shape, budget, monkeypatch):
    """The trainer computes each case's lesion/background voxel indices once; the patches (centres,
    augmentation) must be exactly those MONAI draws when it searches the label itself."""
    import numpy as np

    from LesionFactorizerLib.training.augment import train_transforms
    from LesionFactorizerLib.training.data import DrawSampler, PatchDataset

    rng = np.random.default_rng(0)
    cases = []
    for lesions in (3, 0):                                    # a case without lesion: negative crops only
        label = np.zeros((1, *shape), np.float32)
        for _ in range(lesions):
            z, y, x = (int(rng.integers(0, s)) for s in shape)
            label[0, z:z + 2, y:y + 2, x:x + 2] = 1
        cases.append({"image": rng.random((2, *shape), dtype=np.float32), "label": label})
    aug = load_config(CONFIG_DIR / "demo-ms-new.yaml").data.augmentation
    patch = [8, 8, 8]
    monkeypatch.setattr(PatchDataset, "index_cache_bytes", budget)
    cached = PatchDataset(_ArrayStore(cases), train_transforms(patch, 0.6667, aug), 40, patch)
    searched = PatchDataset(_ArrayStore(cases), train_transforms(patch, 0.6667, aug), 40)
    for key in DrawSampler(40, 3, 0, lambda: 0):
        a, b = cached[key], searched[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert bool(cached._indices) == (min(shape) >= 8)         # padded volumes keep MONAI's own search
    per_case = 4 * int(np.prod(shape))                        # int32 lesion + background indices
    assert len(cached._indices) == (0 if min(shape) < 8 else min(2, budget // per_case))
