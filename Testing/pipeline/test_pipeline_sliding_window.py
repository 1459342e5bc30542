"""Our sliding-window stitching equals MONAI's (constant blend), and eager inference imports neither
MONAI nor torch._dynamo."""

import subprocess
import sys

import pytest
import torch

from LesionFactorizerLib.pipeline.sliding_window import stitch, window_starts


class TwoScaleNet(torch.nn.Module):
    """Outputs at the input's resolution and at 1/4 of it, each depending on the window's content
    AND on the position inside the window (so a mis-placed or mis-averaged window changes the result)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(2, 3, 3, padding=1)
        self.coarse = torch.nn.Conv3d(2, 5, 4, stride=4)

    def forward(self, x):
        ramp = torch.linspace(0, 1, x.shape[-1])
        return {"logits": self.conv(x) + ramp, "encoder3": self.coarse(x) * 2}


@pytest.mark.parametrize("size,roi,interval,batch", [
    ((40, 48, 32), (16, 32, 16), (8, 16, 16), 1),     # uneven window counts, last window moved back
    ((32, 32, 32), (32, 16, 16), (16, 8, 4), 3),      # one window on the first axis, batch not dividing
    ((24, 24, 24), (24, 24, 24), (8, 8, 8), 2),       # one window in all
])
@pytest.mark.slow
def test_stitch_equals_monai_constant_blend(size, roi, interval, batch):
    monai_inferers = pytest.importorskip("monai.inferers")
    net = TwoScaleNet().eval()
    x = torch.randn(1, 2, *size)
    with torch.no_grad():
        ours = stitch(x, roi, interval, batch, net, torch.device("cpu"))
        # MONAI takes an overlap fraction: one that makes int(roi·(1−overlap)) our interval.
        overlap = tuple(min(0.999, max(0.0, 1 - (i + 1e-3) / r)) if s > r else 0.0
                        for i, r, s in zip(interval, roi, size))
        # One output per MONAI call: it mis-stitches a dict whose sorted keys put a coarse output first.
        theirs = {key: monai_inferers.sliding_window_inference(x, roi, batch, lambda b, k=key: net(b)[k],
                                                               overlap=overlap, mode="constant")
                  for key in ours}
    assert set(ours) == {"logits", "encoder3"}
    assert ours["encoder3"].shape[2:] == tuple(s // 4 for s in size)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-5)


def test_window_starts_cover_every_voxel_and_end_at_the_edge():
    size, roi = (40, 17), (16, 17)
    starts = window_starts(size, roi, (12, 5))
    assert sorted({s[0] for s in starts}) == [0, 12, 24]       # 24 + 16 = 40: the last moved back
    assert {s[1] for s in starts} == {0}                       # the window spans the whole axis
    covered = torch.zeros(size)
    for a, b in starts:
        covered[a:a + roi[0], b:b + roi[1]] += 1
    assert covered.min() >= 1 and starts == sorted(starts)     # every voxel, in MONAI's order


def test_window_larger_than_volume_and_non_dividing_output_are_refused():
    net = TwoScaleNet().eval()
    with torch.no_grad(), pytest.raises(ValueError, match="larger than the volume"):
        stitch(torch.zeros(1, 2, 8, 8, 8), (16, 8, 8), (8, 8, 8), 1, net, torch.device("cpu"))
    with torch.no_grad(), pytest.raises(ValueError, match="multiples of the output stride"):
        stitch(torch.zeros(1, 2, 16, 16, 18), (8, 8, 8), (8, 8, 8), 1, net, torch.device("cpu"))


@pytest.mark.slow
def test_inference_imports_neither_monai_nor_dynamo():
    """The worker's start-up cost: eager inference must not load MONAI or torch._dynamo (seconds of
    CPU each at import), which only compiling and exporting need."""
    code = ("import sys, numpy as np, torch\n"
            "from LesionFactorizerLib.pipeline.inference import run_inference\n"
            "from LesionFactorizerLib.presets import build_model\n"
            "m = build_model('swin-factorizer-isles', widths=(8, 16, 32, 64, 128)).eval()\n"
            "r = run_inference([m], np.zeros((2, 48, 32, 32), np.float32), (32, 32, 32), device='cpu',\n"
            "                  backend='eager', want_components=True)\n"
            "assert r.logits.shape[1:] == (48, 32, 32) and r.components\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'monai' or k.startswith('torch._dynamo')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_library_never_imports_monai():
    """MONAI is a training/benchmark dependency only (pyproject extras): Slicer does not install it
    for the worker, so no module of the library may import it — except ``nn/monai_baselines.py``,
    and there only inside a function, when one of those research baselines is built (the worker
    never builds one for the library's own networks)."""
    import ast
    from pathlib import Path

    import LesionFactorizerLib

    offenders = []
    for path in Path(LesionFactorizerLib.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        in_function = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for inner in ast.walk(node) if inner is not node}
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            allowed = path.name == "monai_baselines.py" and id(node) in in_function
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "monai" and not allowed]
    assert offenders == []
