"""Stand-in for the PyTorch extension's PyTorchUtils module (SlicerPyTorch, PyTorchUtils/PyTorchUtils.py).

Its ``installTorch`` runs light-the-torch for torch *and* torchvision and then imports torch into
the calling process, which is why LesionFactorizer does not use it; the stand-in does the same
through the stand-in's recording ``_executePythonModule``, so a test sees it if it is ever called.
"""

import slicer


class PyTorchUtilsLogic:
    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        args = ["install", "torch" + (torchVersionRequirement or ""), "torchvision" + (torchvisionVersionRequirement or "")]
        if forceComputationBackend is not None:
            args.append(f"--pytorch-computation-backend={forceComputationBackend}")
        slicer.util._executePythonModule("light_the_torch", args)
        import torch

        return torch
