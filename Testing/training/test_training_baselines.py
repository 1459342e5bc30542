"""The Table 7.1 baselines train from ``training/`` and export a model file that loads and runs:
Performer, nnU-Net (MONAI DynUNet), UNETR, Swin UNETR and the Res-U-Net, each from its bundled
config with tiny widths on tiny synthetic BraTS (MSD Task01) volumes."""

import pytest
import torch
import yaml

pytest.importorskip("monai")

from LesionFactorizerLib.modelfile import load_model_file  # noqa: E402
from LesionFactorizerLib.presets import PRESETS  # noqa: E402
from LesionFactorizerLib.training import synthetic  # noqa: E402
from LesionFactorizerLib.training.checkpoint_io import load_checkpoint_file  # noqa: E402
from LesionFactorizerLib.training.config import CONFIG_DIR, load_config  # noqa: E402
from LesionFactorizerLib.training.export import export_checkpoint  # noqa: E402
from LesionFactorizerLib.training.run import train  # noqa: E402

pytestmark = pytest.mark.slow

NO_AUG = {k: None for k in ("affine", "flip", "noise", "smooth", "scale_intensity", "shift_intensity",
                            "bias_field", "contrast")}
# (model overrides, patch side): tiny widths; nnU-Net with 5 stages and Swin UNETR with batch norm,
# so that 32³ patches leave more than one value per channel at their coarsest level
TINY = {
    "performer-brats": ({"widths": [8, 8, 8, 8, 8], "head_dim": 4, "pos_embed_size": 1}, 16),
    "nnunet-brats": ({"kernel_size": [3] * 5, "strides": [1, 2, 2, 2, 2], "upsample_kernel_size": [2] * 4,
                      "filters": [4, 8, 8, 8, 8]}, 32),
    "unetr-brats": ({"img_size": [32, 32, 32], "feature_size": 4, "hidden_size": 48, "mlp_dim": 96,
                     "num_heads": 4}, 16),
    "swin-unetr-brats": ({"feature_size": 12, "depths": [1, 1, 1, 1], "norm_name": "batch"}, 32),
    "resunet-brats": ({"widths": [8, 8, 8, 8, 8]}, 32),
}


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    return synthetic.make_msd_task01(tmp_path_factory.mktemp("task01"), n=4, shape=(32, 32, 32), seed=3)


@pytest.mark.parametrize("preset", sorted(TINY))
def test_baseline_trains_and_exports(preset, brats, tmp_path):
    bundled = yaml.safe_load((CONFIG_DIR / f"{preset}.yaml").read_text(encoding="utf-8"))
    assert bundled["model"]["preset"] == preset and bundled["base"] == "tumor-base.yaml"
    overrides, side = TINY[preset]
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "base": str(CONFIG_DIR / f"{preset}.yaml"),
        "data": {"root": str(brats), "patch_size": [side] * 3, "batch_size": 2, "num_workers": 0,
                 "cache": "memory", "augmentation": NO_AUG, "folds": 2},
        "model": {"overrides": overrides},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "trainer": {"max_steps": 2, "val_every": 2, "log_every": 1, "accelerator": "cpu",
                    "output_dir": str(tmp_path / "runs"), "progress_bar": False}}), encoding="utf-8")
    result = train(load_config(cfg_path), fold=0, progress=False)
    assert result.steps == 2
    before = load_checkpoint_file(result.last)["state_dict"]
    out = tmp_path / f"{preset}.safetensors"
    export_checkpoint(result.last, out)
    loaded = load_model_file(out)
    assert loaded.metadata["architecture"]["name"] == PRESETS[preset].architecture
    state = loaded.model.state_dict()
    trained = {k.removeprefix("model."): v for k, v in before.items() if k.startswith("model.")}
    assert set(trained) == set(state)
    for name, value in trained.items():   # the exported weights are the trained ones
        torch.testing.assert_close(state[name], value)
    with torch.no_grad():
        logits = loaded.model.eval()(torch.randn(1, 4, 20, 18, 16))
    assert logits.shape == (1, 3, 20, 18, 16) and torch.isfinite(logits).all()
