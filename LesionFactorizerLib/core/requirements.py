"""The packages the library needs, and the ones its extras add: their one home.

``setup.py`` declares them to pip (``pyproject.toml`` lists ``dependencies`` and
``optional-dependencies`` as dynamic), and the Slicer extension's first-use installer installs from
them (``LesionFactorizerModuleLib/dependencies.py`` adds its tested ceilings). Floors are the oldest
versions tested; ranges, not pins, so users with GPUs keep the CUDA build of torch they need.
Standard library only: ``setup.py`` imports this before anything is installed.
"""

from __future__ import annotations

REQUIRES = (
    "numpy>=1.24",
    "torch>=2.1",
    "SimpleITK>=2.2",
    "safetensors>=0.4",
    "einops>=0.6",
    "tqdm>=4.60",
    "pyyaml>=6.0",
    "scipy>=1.10",
    "matplotlib>=3.7",
)

_EXTRAS = {
    # MONAI: training's transforms, losses and validation windows, and the benchmarks' DynUNet baseline
    "training": ("monai>=1.3", "lightning>=2.1", "tensorboard>=2.12", "nilearn>=0.10"),
    # --dicom-seg: DICOM Segmentation objects for PACS (pure Python). highdicom < 0.23 fails under
    # numpy 2 (np.float_), and 0.23+ needs pydicom 3
    "dicom": ("highdicom>=0.23", "pydicom>=3.0.1"),
    # --format seg.nrrd: Slicer's segmentation file with segment names, colours and terminology
    "slicer": ("slicerio>=1.4",),
    # nmf-rank: the Kneedle elbow of the NMF error-vs-rank curve (thesis 5.4)
    "analysis": ("kneed>=0.8",),
    # ONNX export and ONNX Runtime inference
    "export": ("onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"),
    # `lesion-factorizer serve`: the server's HTTP stack (its clients need only the standard library)
    "serve": ("fastapi>=0.110", "uvicorn>=0.29"),
    # the official BraTS evaluation package, which `evaluate --convention brats` is tested against;
    # not in dev: it pins numpy and pandas below what the rest is tested with
    "brats": ("brats-evaluation>=0.0.10",),
    # benchmarks/bench_peers.py only: nnU-Net v2's own predictor as the speed peer (heavy)
    "peers": ("nnunetv2>=2.5",),
}


def _union(*names: str, more: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r for name in names for r in _EXTRAS[name])) + more


EXTRAS: dict[str, tuple[str, ...]] = {
    **_EXTRAS,
    "all": _union("training", "dicom", "slicer", "serve", "analysis"),
    # what the tests need: every extra whose code CI tests (export and serve included: their tests
    # run real ONNX round trips and a real server), and the test tools
    "dev": _union("training", "dicom", "slicer", "export", "serve", "analysis",
                  more=("pytest>=7.4", "scikit-learn>=1.3", "medpy>=0.5")),
}

# Outputs that need an extra's packages, installed in Slicer when a run first asks for that output.
OUTPUT_EXTRAS = {"dicom_seg": "dicom", "seg.nrrd": "slicer"}
