"""Every preset is one graph: torch.export (strict, i.e. traced by TorchDynamo, which fails on any
graph break) and ONNX (run by ONNX Runtime) reproduce eager outputs. Tiny widths and one small
input per preset keep this cheap; what is checked is the graph, which does not depend on width."""

import numpy as np
import pytest
import torch

from LesionFactorizerLib.nn import window_op
from LesionFactorizerLib.nn.monai_baselines import NETWORKS as MONAI_NETWORKS
from LesionFactorizerLib.presets import PRESETS, build_model

pytestmark = pytest.mark.slow

# The MONAI baselines are research baselines trained side by side (test_training_baselines.py); the
# inference backends' export paths are for the library's own networks.
EXPORTED = [name for name, preset in PRESETS.items() if preset.architecture not in MONAI_NETWORKS]

TOL = 1e-4


def tiny(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    preset = PRESETS[name]
    small = (dict(features=4, levels=2) if preset.architecture == "resunet8"
             else dict(widths=(8, 16), deep_supervision=1))
    model = build_model(name, **small).eval()
    # 16³ holds two windows per axis for every Factorizer (windows 4 and 8), so the shifted
    # partition wraps around.
    x = torch.rand(1, model.config["kwargs"]["in_channels"], 16, 16, 16,
                   generator=torch.Generator().manual_seed(0))
    return model, x


@pytest.fixture(scope="module", params=EXPORTED)
def exported(request):
    model, x = tiny(request.param)
    with torch.no_grad():
        eager = model(x)
    program = torch.export.export(model, (x,), strict=True)  # strict: a graph break is an error
    return request.param, program, x, eager


def test_torch_export_equals_eager(exported):
    name, program, x, eager = exported
    with torch.no_grad():
        got = program.module()(x)
    assert (got - eager).abs().max().item() <= TOL, name


def test_no_random_generator_in_the_graph(exported):
    name, program, _, _ = exported
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not [op for op in ops if "rand" in op or "generator" in op.lower()], name


def test_onnx_runtime_equals_eager(exported, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    name, program, x, eager = exported
    path = tmp_path / "model.onnx"
    torch.onnx.export(window_op.for_onnx(program), (x,), str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(got - eager.numpy()).max() <= TOL, name


def test_swin_factorizer_compiles_without_graph_breaks():
    """torch.compile's view of the same fact: one graph, no break (explain traces, compiles nothing)."""
    model, x = tiny("swin-factorizer-isles")
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
