"""The window NMF as a registered operator (nn/window_op.py): torch.compile and torch.export keep it
in their graphs (so they run the compiled kernel), with outputs equal to eager; gradients through
an exported graph equal the plain graph's; ONNX gets the plain computation; an untrusted kernel
leaves the operator on the PyTorch path. (That eager inference, which calls the kernel directly,
imports no torch._dynamo is test_pipeline_sliding_window's.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from LesionFactorizerLib.nn import native, window_op
from LesionFactorizerLib.nn.factorizer import plain_forward
from LesionFactorizerLib.nn.nmf import initial_factors
from LesionFactorizerLib.presets import build_model

pytestmark = pytest.mark.skipif(window_op.OP is None, reason="torch < 2.4 has no torch.library.custom_op")

OP = "lesion_factorizer.window_nmf"   # Dynamo's graphs name the packet, exported ones its .default
TOL = 1e-4


def tiny(name: str = "swin-factorizer-isles"):
    """A freshly built preset at tiny width; 16³ holds two windows per axis (the rolled partition wraps)."""
    model = build_model(name, widths=(8, 16), deep_supervision=1).eval()
    x = torch.rand(1, model.config["kwargs"]["in_channels"], 16, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, x


def op_count(graph) -> int:
    return sum(str(node.target).removesuffix(".default") == OP for node in graph.nodes if node.op == "call_function")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin-factorizer-isles", "local-factorizer-brats"])
def test_compile_keeps_the_operator_and_equals_eager(name):
    model, x = tiny(name)
    graphs = []

    def record(gm, example_inputs):   # the graph Dynamo hands a backend, run as it is
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, backend=record, fullgraph=True)(x)
    assert sum(op_count(gm.graph) for gm in graphs) == len(model.nmf_layers())
    assert (compiled - eager).abs().max().item() <= TOL


@pytest.mark.slow
def test_compile_with_gradients_traces_the_plain_graph():
    """Under autograd torch.compile differentiates the plain graph (the operator's backward
    recomputes it, which a compiled backward need not trace)."""
    model, x = tiny()
    graphs = []
    torch.compile(model, backend=lambda gm, _: graphs.append(gm) or gm.forward, fullgraph=True)(x)
    assert graphs and sum(op_count(gm.graph) for gm in graphs) == 0


@pytest.mark.slow
def test_export_keeps_the_operator_equals_eager_and_differentiates():
    model, x = tiny()
    program = torch.export.export(model, (x,), strict=True)
    assert op_count(program.graph) == len(model.nmf_layers())
    assert op_count(program.run_decompositions().graph) == len(model.nmf_layers())   # kept for ATen IR
    with torch.no_grad():
        eager = model(x)
        assert (program.module()(x) - eager).abs().max().item() <= TOL
    # gradients through the exported graph (the operator's backward) equal the plain graph's
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    program.module()(xs[0]).square().sum().backward()
    with plain_forward(model):
        model(xs[1]).square().sum().backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_gets_the_plain_computation(tmp_path):
    """ONNX Runtime cannot run our kernel: a module exports the plain computation, and an exported
    program holding the operator exports it after ``for_onnx``."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model, x = tiny()
    with torch.no_grad():
        eager = model(x).numpy()
    for source in (model, window_op.for_onnx(torch.export.export(model, (x,), strict=True))):
        path = tmp_path / "model.onnx"
        torch.onnx.export(source, (x,), str(path), dynamo=True, verbose=False)
        assert not [n.op_type for n in onnx.load(str(path)).graph.node if n.domain not in ("", "ai.onnx")]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert np.abs(got - eager).max() <= TOL


def test_the_operator_equals_its_definition_by_the_kernel_and_the_pytorch_path(monkeypatch):
    """Called on its own (as an exported program runs it): the kernel where it loads, and with no
    library the PyTorch window path, both equal the plain definition, which drops a component too."""
    gen = torch.Generator().manual_seed(3)
    z, weight, bias = torch.rand(1, 8, 8, 8, 16, generator=gen), torch.randn(16, 16, generator=gen), torch.randn(16)
    v0 = initial_factors(8, 64, 1, 7)[1][:, 0]
    args = (z, weight, bias, v0, 8, 4, True, 3, 1e-8, 7, 1, -1)   # 2 heads of 8, window 4, head 1 dropped
    with torch.no_grad():
        expected = window_op.definition(*args)
        torch.testing.assert_close(window_op.OP(*args), expected, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(native, "library", lambda: None)
        torch.testing.assert_close(window_op.OP(*args), expected, rtol=1e-5, atol=1e-5)


UNTRUSTED = """
import torch
from LesionFactorizerLib.nn import native
from LesionFactorizerLib.presets import build_model
model = build_model("swin-factorizer-isles", widths=(8, 16), deep_supervision=1).eval()
x = torch.rand(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
graphs = []
with torch.no_grad():
    eager = model(x)
    got = torch.compile(model, backend=lambda gm, _: graphs.append(gm) or gm.forward)(x)
ops = sum(str(n.target) == "lesion_factorizer.window_nmf" for g in graphs for n in g.graph.nodes)
print(native.status())
print(ops - len(model.nmf_layers()), float((got - eager).abs().max()))
"""


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt" or native._compiler() is None, reason="builds a kernel to damage")
def test_an_untrusted_kernel_leaves_the_operator_on_the_pytorch_path(tmp_path):
    """In a copy of the package whose prebuilt library does not match its manifest, the compiled
    graph still holds the operator, and it runs the PyTorch path (equal outputs, the refusal in
    the status)."""
    nn = tmp_path / "site" / "LesionFactorizerLib" / "nn"
    shutil.copytree(Path(native.__file__).parents[1], nn.parent,
                    ignore=shutil.ignore_patterns("__pycache__", "window_nmf.[!c]*"))
    library = nn / f"window_nmf{native.SUFFIX}"
    subprocess.run([native._compiler(), "-O3", "-std=c99", "-shared", "-fPIC", "-o", str(library),
                    str(nn / "window_nmf.c")], check=True, capture_output=True)
    from LesionFactorizerLib.nn.kernelfile import manifest

    record = manifest(library, "cc, test")
    record["sha256"] = "0" * 64   # the library is not the one recorded
    (nn / "window_nmf.json").write_text(json.dumps(record))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "LESION_FACTORIZER_NATIVE": "1",
           "LESION_FACTORIZER_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", UNTRUSTED], capture_output=True, text=True, timeout=600,
                         env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    status, result = run.stdout.strip().splitlines()[-2:]
    ops, diff = result.split()
    assert status.startswith("pytorch (the installed kernel is not used") and "SHA-256" in status, status
    assert int(ops) == 0 and float(diff) <= TOL   # one operator per NMF layer
