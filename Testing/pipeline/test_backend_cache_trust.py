"""The backends' cache (pipeline/backends.py) is trusted like the kernel's: compiled code and ONNX
files are used only from the user's own folder and after their recorded SHA-256 matched, and the
measurements only when they parse strictly. Real files in a temporary cache folder."""

import json
import os

import numpy as np
import pytest
import torch

from LesionFactorizerLib.core.checksums import sha256
from LesionFactorizerLib.pipeline import backends
from LesionFactorizerLib.pipeline.inference import run_inference
from LesionFactorizerLib.presets import build_model

pytestmark = pytest.mark.slow

TOL = 1e-4


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("LESION_FACTORIZER_CACHE", str(folder))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)   # ours, under the cache folder
    return folder


def tiny_swin():
    return build_model("swin-factorizer-isles", widths=(8, 16), deep_supervision=1).eval()


def _array():
    return np.random.default_rng(0).random((2, 16, 16, 16), dtype=np.float32)


@pytest.mark.parametrize("backend", ["compile", "onnx"])
@pytest.mark.parametrize("mode", [0o770, 0o707])
def test_a_cache_others_can_write_is_refused_with_one_warning_and_eager_runs(cache, backend, mode):
    if backends.unavailable(backend):
        pytest.skip(backends.unavailable(backend))
    cache.mkdir(mode=0o700)
    os.chmod(cache, mode)
    res = run_inference([tiny_swin()], _array(), (16, 16, 16), sw_batch_size=1, device="cpu", backend=backend)
    assert res.backend == "eager"
    refusals = [w for w in res.warnings if "writable by other users" in w]
    assert len(refusals) == 1 and backend in refusals[0], res.warnings
    assert not [p for p in cache.rglob("*") if p.is_file()]   # nothing compiled or exported there


def test_users_own_inductor_folder_is_checked_too(cache, tmp_path, monkeypatch):
    if backends.unavailable("compile"):
        pytest.skip(backends.unavailable("compile"))
    shared = tmp_path / "shared-inductor"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(shared))
    res = run_inference([tiny_swin()], _array(), (16, 16, 16), sw_batch_size=1, device="cpu", backend="compile")
    assert res.backend == "eager" and any("writable by other users" in w for w in res.warnings)


@pytest.mark.parametrize("damage", ["truncated", "swapped"])
def test_a_damaged_or_swapped_onnx_file_is_not_used(cache, damage):
    if backends.unavailable("onnx"):
        pytest.skip(backends.unavailable("onnx"))
    model = tiny_swin()
    x = torch.rand(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    backends.build("onnx", model, tuple(x.shape))
    (path,) = (cache / "onnx").glob("*.onnx")
    record = path.with_suffix(".json")
    assert json.loads(record.read_text())["sha256"] == sha256(path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "swapped":   # a valid ONNX model of other weights, same name and size
        other = tiny_swin()
        for p in other.parameters():
            p.data.add_(0.5)
        backends.build("onnx", other, tuple(x.shape))
        (planted,) = set((cache / "onnx").glob("*.onnx")) - {path}
        os.replace(planted, path)
    messages = []
    runner = backends.build("onnx", model, tuple(x.shape), messages.append)
    assert any("exporting" in m for m in messages)   # exported again, not loaded
    with torch.no_grad():
        assert (runner(x) - model(x)).abs().max().item() <= TOL
    assert json.loads(record.read_text())["sha256"] == sha256(path)


@pytest.mark.parametrize("content", ['[1, 2]', '{"k": {"winner": NaN}}', '{"k": 3}', '{"k": {"winner": "evil"}}',
                                     '{"k": {"winner": "onnx"}, "k": {"winner": "compile"}}', "\xff"])
def test_measurements_are_parsed_strictly(cache, content):
    cache.mkdir(mode=0o700)
    (cache / backends.RECORDS).write_text(content.replace("k", _key()), encoding="latin-1")
    assert backends.load_records() == {}
    assert backends.choose("auto", tiny_swin(), (1, 2, 16, 16, 16), "cpu", 1) == ("eager", None)


def test_measurements_others_could_write_are_ignored(cache):
    cache.mkdir(mode=0o700)
    path = cache / backends.RECORDS
    path.write_text(json.dumps({_key(): {"winner": "compile"}}))
    os.chmod(path, 0o600)
    assert backends.load_records()[_key()]["winner"] == "compile"
    os.chmod(path, 0o620)
    assert backends.load_records() == {}


def _key():
    return backends.speed_key(tiny_swin(), (1, 2, 16, 16, 16), "cpu", 1)
