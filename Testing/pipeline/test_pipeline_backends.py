"""Inference backends (pipeline/backends.py): compiled and exported networks give eager's outputs,
``auto`` picks only a measured winner, and an unavailable backend falls back to eager cleanly.
Tiny widths and a 16³ window keep compiling cheap; no timing is asserted."""

import numpy as np
import pytest
import torch

from LesionFactorizerLib.pipeline import backends
from LesionFactorizerLib.pipeline.inference import run_inference
from LesionFactorizerLib.presets import build_model

pytestmark = pytest.mark.slow

TOL = 1e-4


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def private_cache(shared_cache, monkeypatch):
    """Measurements, exported files and compiled code of the tests never reach the user's cache.
    The folder is shared by this module's tests, so the tiny network is exported (slow) once; the
    measurements start empty in every test."""
    monkeypatch.setenv("LESION_FACTORIZER_CACHE", str(shared_cache))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(shared_cache / "inductor"))
    (shared_cache / backends.RECORDS).unlink(missing_ok=True)


def tiny_swin():
    model = build_model("swin-factorizer-isles", widths=(8, 16), deep_supervision=1).eval()
    x = torch.rand(2, 2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, x


@pytest.mark.parametrize("name", ["compile", "onnx"])
def test_backend_equals_eager(name):
    if backends.unavailable(name):
        pytest.skip(backends.unavailable(name))
    model, x = tiny_swin()
    runner = backends.build(name, model, tuple(x.shape))
    with torch.no_grad():
        eager = model(x)
        got = runner(x)
        # a smaller last batch is padded to the prepared shape and cropped back
        one = runner(x[:1])
    assert runner.name == name
    assert (got - eager).abs().max().item() <= TOL
    assert one.shape == (1, *eager.shape[1:]) and (one - eager[:1]).abs().max().item() <= TOL


def test_onnx_export_is_cached():
    if backends.unavailable("onnx"):
        pytest.skip(backends.unavailable("onnx"))
    model, x = tiny_swin()
    first, second = [], []
    backends.build("onnx", model, tuple(x.shape), first.append)
    files = sorted((backends.cache_dir() / "onnx").glob("*.onnx"))
    backends.build("onnx", model, tuple(x.shape), second.append)
    assert sorted((backends.cache_dir() / "onnx").glob("*.onnx")) == files  # reused, not exported again
    assert first and second and not any("exporting" in m for m in second)


def test_auto_is_eager_without_a_measurement_and_the_recorded_winner_with_one():
    model, x = tiny_swin()
    shape = tuple(x.shape)
    assert backends.choose("auto", model, shape, "cpu", 2) == ("eager", None)
    backends.save_record(backends.speed_key(model, shape, "cpu", 2), {"winner": "onnx"})
    expected = "eager" if backends.unavailable("onnx") else "onnx"
    assert backends.choose("auto", model, shape, "cpu", 2) == (expected, None)
    # another thread count or window is another measurement
    assert backends.choose("auto", model, shape, "cpu", 1)[0] == "eager"


def test_unavailable_backend_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr(backends, "unavailable", lambda name, device_type="cpu": None if name == "eager" else "not here")
    model, x = tiny_swin()
    backends.save_record(backends.speed_key(model, tuple(x.shape), "cpu", 2), {"winner": "compile"})
    assert backends.choose("auto", model, tuple(x.shape), "cpu", 2) == ("eager", None)
    name, why = backends.choose("onnx", model, tuple(x.shape), "cpu", 2)
    assert name == "eager" and "not here" in why


def test_calibration_records_only_a_winner_that_matches_eager(monkeypatch):
    model, x = tiny_swin()
    out = backends.calibrate(model, tuple(x.shape), backends=("eager", "onnx"), repeats=1, notify=lambda m: None)
    assert out["winner"] in ("eager", "onnx")
    assert "seconds" in out["results"]["eager"]
    if "seconds" in out["results"]["onnx"]:
        assert out["results"]["onnx"]["max_diff"] <= TOL
    assert backends.load_records()[out["key"]]["winner"] == out["winner"]


def _array():
    return np.random.default_rng(0).random((2, 32, 32, 32), dtype=np.float32)


def test_run_inference_reports_the_backend_and_equals_eager():
    model, _ = tiny_swin()
    eager = run_inference([model], _array(), (16, 16, 16), sw_batch_size=2, device="cpu", backend="eager")
    assert eager.backend == "eager"
    if backends.unavailable("onnx"):
        pytest.skip(backends.unavailable("onnx"))
    messages = []
    onnx = run_inference([model], _array(), (16, 16, 16), sw_batch_size=2, device="cpu", backend="onnx",
                         on_message=messages.append)
    assert onnx.backend == "onnx" and not onnx.warnings
    assert any("ONNX" in m for m in messages)  # said what it runs before it ran
    assert np.abs(onnx.logits - eager.logits).max() <= TOL


def test_components_pass_runs_eager_and_says_so():
    model, _ = tiny_swin()
    res = run_inference([model], _array(), (16, 16, 16), device="cpu", backend="eager", want_components=True)
    assert res.backend == "eager" and res.components


def test_a_backend_that_disagrees_with_eager_is_not_used(monkeypatch):
    """The first-batch check: wrong logits from a backend never reach the result."""
    model, _ = tiny_swin()
    real_build = backends.build

    def bad_build(name, model, shape, notify=lambda m: None):
        runner = real_build("eager", model, shape)
        if name == "eager":
            return runner
        return backends.Runner(name, tuple(shape), lambda b: model(b) + 1.0)

    monkeypatch.setattr(backends, "build", bad_build)
    monkeypatch.setattr(backends, "unavailable", lambda name, device_type="cpu": None)
    res = run_inference([model], _array(), (16, 16, 16), device="cpu", backend="compile")
    ref = run_inference([model], _array(), (16, 16, 16), device="cpu", backend="eager")
    assert res.backend == "eager" and any("not used" in w for w in res.warnings)
    # eager's logits, not the backend's (+1): equal up to the rounding of a zero-padded batch
    assert np.abs(res.logits - ref.logits).max() <= 1e-5


def test_compile_is_unavailable_in_a_non_utf8_locale():
    """torch's compiler reads its templates in the locale's encoding: in a process whose C library
    locale was switched to ASCII (as some libraries do) it would crash, so it is not offered."""
    import locale
    import sys

    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode ignores the locale's encoding")
    before = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")
        assert "UTF-8 locale" in (backends.unavailable("compile") or "")
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


def test_calibration_is_a_command_of_the_cli(tmp_path, capsys):
    """``lesion-factorizer calibrate`` (the backends module has no command line of its own): a
    model that is not there is one ``error:`` line and exit 2, before anything is measured."""
    from LesionFactorizerLib.cli import main

    assert main(["calibrate", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.safetensors" in err
    assert backends.load_records() == {}
