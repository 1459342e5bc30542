"""The network presets as data: the thesis / reference configurations by name, each an
architecture name plus keyword arguments, a patch size and where the numbers come from.

Torch-free (standard library only): listing presets or reading their Table 7.1 numbers builds
nothing. :mod:`LesionFactorizerLib.presets` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    architecture: str
    kwargs: dict[str, Any]
    patch_size: tuple[int, int, int]
    description: str
    source: str = ""
    # (parameters in millions, GFLOPs at 1 × in_channels × patch) as the thesis reports them
    thesis: tuple[float, float] | None = None


# Thesis Table 7.1 (BraTS, 1×4×128³): parameters (M) and GFLOPs of each model.
TABLE_7_1 = {"nnU-Net": (28.7, 1152.8), "Res-U-Net": (28.9, 1168.6), "Performer": (6.7, 222.7),
             "UNETR": (111.5, 1124.9), "Swin UNETR": (62.2, 1549.8), "Global Factorizer": (5.9, 170.0),
             "Local Factorizer": (5.9, 170.0), "Swin Factorizer": (5.9, 174.2)}
BRATS_TABLE_7_1 = "BraTS (MSD Task01): FLAIR, T1, T1Gd, T2 → ET, TC, WT; thesis Table 7.1"


def _factorizer(matricize: str, dataset: str) -> Preset:
    brats = dataset == "brats"
    kwargs = dict(
        in_channels=4 if brats else 2, out_channels=3 if brats else 1, matricize=matricize,
        head_dim=8 if brats else 4, window=None if matricize == "global" else (8 if brats else 4),
        mlp_ratio=2.0 if brats else 4.0, pos_embed_size=8 if brats else 4,
    )
    title = {"swin": "Swin", "local": "Local", "global": "Global"}[matricize]
    data = "BraTS (MSD Task01): FLAIR, T1, T1Gd, T2 → ET, TC, WT" if brats else "ISLES'22: DWI, ADC → infarct"
    return Preset("factorizer", kwargs, (128,) * 3 if brats else (64,) * 3,
                  f"{title} Factorizer, {data}", "thesis 7.4.2; pashtari/factorizer 0.0.1 configs",
                  TABLE_7_1[f"{title} Factorizer"] if brats else None)


def _table_7_1(architecture: str, kwargs: dict[str, Any], title: str, source: str) -> Preset:
    """A Table 7.1 baseline: 4 BraTS inputs → ET, TC, WT (sigmoid), 128³ patches."""
    return Preset(architecture, dict(in_channels=4, out_channels=3, **kwargs), (128,) * 3,
                  f"{title}, {BRATS_TABLE_7_1}", source, TABLE_7_1[title])


def _unet(block: str, title: str) -> Preset:
    return Preset("unet", dict(in_channels=2, out_channels=1, block=block), (128,) * 3,
                  f"{title}, MSSEG-2: FLAIR baseline + follow-up → new lesions", "thesis 6.3; pashtari/xunet")


PRESETS: dict[str, Preset] = {
    "swin-factorizer-brats": _factorizer("swin", "brats"),
    "local-factorizer-brats": _factorizer("local", "brats"),
    "global-factorizer-brats": _factorizer("global", "brats"),
    "swin-factorizer-isles": _factorizer("swin", "isles"),
    "unet-msseg2": _unet("double", "U-Net"),
    "resunet-msseg2": _unet("basic", "Res-U-Net"),
    "preunet-msseg2": _unet("preact", "Pre-U-Net"),
    "resunet-brats": _table_7_1("unet", dict(block="basic"), "Res-U-Net", "thesis 7.4; the Factorizer skeleton"),
    "performer-brats": _table_7_1(
        "performer", dict(head_dim=8, mlp_ratio=2.0, pos_embed_size=8), "Performer",
        "thesis 4.4.5, 7.4; reference global-performer config"),
    # nnU-Net's plan for 128³ patches: 6 stages (5 poolings, bottleneck 4³), 32 features doubling to
    # at most 320, 3×3×3 convs, instance norm, LeakyReLU, deep supervision on the 2 next-coarser levels
    "nnunet-brats": _table_7_1(
        "dynunet", dict(kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, 2], upsample_kernel_size=[2] * 5,
                        filters=[32, 64, 128, 256, 320, 320], norm_name="instance", deep_supervision=True,
                        deep_supr_num=2, res_block=False), "nnU-Net", "thesis 7.4; MONAI DynUNet as nnU-Net"),
    # MONAI's UNETR with feature size 32 (its default 16 gives 102.5 M, the thesis reports 111.5 M)
    "unetr-brats": _table_7_1(
        "unetr", dict(img_size=[128, 128, 128], feature_size=32, hidden_size=768, mlp_dim=3072, num_heads=12,
                      norm_name="instance", res_block=True), "UNETR", "thesis 7.4; MONAI UNETR"),
    "swin-unetr-brats": _table_7_1("swin-unetr", dict(feature_size=48), "Swin UNETR", "thesis 7.4; MONAI SwinUNETR"),
    "resunet-brats2020": Preset(
        "resunet8", dict(in_channels=4, out_channels=4, features=60), (128,) * 3,
        "Chapter-8 Res-U-Net (F=60), BraTS 2020 → background, NCR, ED, ET", "thesis 8.3.2"),
    "lowrank-resunet-brats2020": Preset(
        "resunet8", dict(in_channels=4, out_channels=4, features=60, alpha=0.5), (128,) * 3,
        "Chapter-8 low-rank Res-U-Net (F=60, α=0.5), BraTS 2020", "thesis 8.3.3"),
}
