"""Model files: safetensors + metadata round trip, damage detection, search, import, CLI."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, main_in_process

from LesionFactorizerLib import build_model
from LesionFactorizerLib.cli import main
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.modelfile import (FORMAT_VERSION, METADATA_KEY, default_model, find_model, import_model,
                                           list_models, load_model_file, make_metadata, read_metadata,
                                           save_model_file, verify_file, verify_model)


def tiny_swin():
    torch.manual_seed(0)
    return build_model("swin-factorizer-isles", widths=(8, 16, 32, 64, 128))


@pytest.fixture()
def model_file(tmp_path):
    model = tiny_swin()
    path = tmp_path / "tiny.safetensors"
    meta = make_metadata("stroke", model.config, name="tiny", patch_size=(32, 32, 32), description="test")
    save_model_file(path, model, meta)
    return path, model


def _rewrite_metadata(src: Path, dst: Path, change) -> None:
    """Copy a model file with its metadata JSON edited (the weights checksum stays valid)."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"][METADATA_KEY])
    change(meta)
    header["__metadata__"][METADATA_KEY] = json.dumps(meta)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def test_round_trip_gives_the_same_network(model_file):
    path, model = model_file
    loaded = load_model_file(path)
    assert loaded.metadata["task"] == "stroke" and loaded.metadata["inputs"] == ["dwi", "adc"]
    assert loaded.metadata["architecture"] == {"name": "factorizer", "kwargs": model.config["kwargs"]}
    x = torch.randn(1, 2, 16, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert len(loaded.sha256) == 64


def test_half_precision_files_are_half_the_size_and_load_as_float32(tmp_path, model_file):
    path, model = model_file
    half = tmp_path / "half.safetensors"
    save_model_file(half, model, read_metadata(path), half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    loaded = load_model_file(half)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    for (k, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=2e-3, rtol=1e-3), k


@pytest.mark.slow
def test_metadata_reads_without_torch(model_file):
    path, _ = model_file
    code = (f"import sys; from LesionFactorizerLib.modelfile import read_metadata, verify_file; "
            f"m = read_metadata({str(path)!r}); verify_file({str(path)!r}); "
            f"assert 'torch' not in sys.modules; print(m['task'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, encoding="utf-8")
    assert proc.returncode == 0 and proc.stdout.strip() == "stroke", proc.stderr


@pytest.mark.parametrize("keep", [0, 5, 100, -1000, -1])
def test_truncated_file_is_a_clear_error(tmp_path, model_file, keep):
    path, _ = model_file
    raw = path.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(raw[:keep] if keep >= 0 else raw[:len(raw) + keep])
    with pytest.raises(UserError, match="damaged|truncated|bytes"):
        read_metadata(bad)
    with pytest.raises(UserError):
        load_model_file(bad)


def test_tampered_weights_fail_the_checksum(tmp_path, model_file):
    path, _ = model_file
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(raw))
    read_metadata(bad)                      # the header is still fine …
    with pytest.raises(UserError, match="checksum"):
        verify_file(bad)                    # … but the weights are not
    with pytest.raises(UserError, match="checksum"):
        load_model_file(bad)


def test_garbage_and_foreign_files_are_rejected(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(UserError, match="damaged"):
        read_metadata(junk)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(UserError, match="truncated"):
        read_metadata(huge)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(UserError, match="without LesionFactorizer metadata"):
        read_metadata(plain)


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(format_version=FORMAT_VERSION + 1), "format version"),
    (lambda m: m.update(task="liver"), "unknown task"),
    (lambda m: m.update(inputs=["dwi", "t1"]), "not inputs of task"),
    (lambda m: m.update(inputs=["dwi"]), "required input"),
    (lambda m: m["architecture"]["kwargs"].update(in_channels=3), "input channels"),
    (lambda m: m["outputs"].update(channels=["a", "b"]), "output channels"),
    (lambda m: m["preprocessing"].update(patch_size=[32, 32]), "patch_size"),
    (lambda m: m.update(postprocessing={"min_lesion_mm": 3}), "unknown postprocessing key"),
    (lambda m: m.update(postprocessing={"mode": "majority"}), "postprocessing.mode"),
    (lambda m: m.update(postprocessing={"mode": "argmax"}), "needs softmax"),
    (lambda m: m.update(postprocessing={"connectivity": 8}), "6, 18 or 26"),
    (lambda m: m.update(postprocessing={"threshold": 1.5}), "between 0 and 1"),
    (lambda m: m.update(postprocessing={"min_lesion_mm3": -1}), "min_lesion_mm3"),
])
def test_inconsistent_metadata_is_refused(tmp_path, model_file, change, message):
    path, _ = model_file
    bad = tmp_path / "bad.safetensors"
    _rewrite_metadata(path, bad, change)
    with pytest.raises(UserError, match=message):
        read_metadata(bad)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, model_file):
    path, _ = model_file
    bad = tmp_path / "wider.safetensors"
    _rewrite_metadata(path, bad, lambda m: m["architecture"]["kwargs"].update(widths=[16, 32, 64, 128, 256]))
    verify_file(bad)   # the file itself is intact
    with pytest.raises(UserError, match="do not match architecture"):
        load_model_file(bad)


def test_models_are_found_by_name_on_the_search_path(tmp_path, monkeypatch, model_file):
    path, _ = model_file
    user = tmp_path / "user-models"
    monkeypatch.setenv("LESIONFACTORIZER_MODELS", str(user))
    with pytest.raises(UserError, match="no model named 'tiny'"):
        find_model("tiny")
    dest = import_model(path)
    assert dest == user / "tiny.safetensors" and find_model("tiny") == dest
    with pytest.raises(UserError, match="--overwrite"):
        import_model(path)
    import_model(path, name="tiny2")
    (user / "broken.safetensors").write_bytes(b"nope")
    entries = {e.name: e for e in list_models()}
    assert {"tiny", "tiny2", "broken"} <= set(entries)
    assert entries["broken"].problem and entries["tiny"].metadata["task"] == "stroke"
    assert all(e.metadata["task"] == "tumor" for e in list_models("tumor"))
    assert default_model("stroke").parent == user     # user models come before bundled ones
    # without bundled models (a bare pip install), a task with no model is a clear error
    import LesionFactorizerLib.modelfile as modelfile

    monkeypatch.setattr(modelfile, "bundled_model_dirs", lambda: [])
    with pytest.raises(UserError, match="no model for task 'tumor'"):
        default_model("tumor")
    assert verify_model("tiny")["parameters"] > 0
    with pytest.raises(UserError, match="does not exist"):
        find_model(str(tmp_path / "missing.safetensors"))


def test_models_cli_list_info_verify_import(tmp_path, monkeypatch, capsys, model_file):
    path, _ = model_file
    monkeypatch.setenv("LESIONFACTORIZER_MODELS", str(tmp_path / "m"))
    assert main(["models", "import", str(path), "--name", "mine"]) == 0
    assert main(["models", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert [e["name"] for e in listed if e["source"] == "user"] == ["mine"]
    assert main(["models", "info", "mine"]) == 0
    assert "task:          stroke" in capsys.readouterr().out
    assert main(["models", "verify", "mine"]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:-7])
    assert main(["models", "verify", str(bad)]) == 2
    assert "FAILED" in capsys.readouterr().out


def _raw_file(path: Path, tensor_entry: dict, data: bytes) -> Path:
    header = json.dumps({"w": tensor_entry, "__metadata__": {METADATA_KEY: "{}"}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [3], "data_offsets": ["0", 12]},
    {"dtype": "F32", "shape": [3], "data_offsets": [0, None]},
    {"dtype": "F32", "shape": [3], "data_offsets": [0.0, 12.0]},
    {"dtype": "F32", "shape": [3], "data_offsets": [False, 12]},
    {"dtype": "F32", "shape": ["3"], "data_offsets": [0, 12]},
    {"dtype": "F32", "shape": [3], "data_offsets": {"begin": 0}},
])
def test_header_with_non_integer_offsets_or_shape_is_a_clear_error(tmp_path, entry):
    """Offsets or shapes that are not whole numbers are damage, not a TypeError traceback."""
    bad = _raw_file(tmp_path / "odd.safetensors", entry, bytes(12))
    with pytest.raises(UserError, match="tensor 'w' has an invalid entry"):
        read_metadata(bad)
    proc = main_in_process("models", "verify", "--quick", bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "invalid entry" in proc.stdout


def test_loading_reports_both_checksums_from_one_read(model_file):
    import hashlib

    path, _ = model_file
    loaded = load_model_file(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert loaded.sha256 == hashlib.sha256(raw).hexdigest()
    assert loaded.weights_sha256 == hashlib.sha256(raw[8 + n:]).hexdigest() == loaded.metadata["weights"]["sha256"]
    quick, full = verify_file(path), verify_model(path)
    assert {k: v for k, v in full.items() if k != "parameters"} == quick
    assert full["parameters"] == sum(p.numel() for p in loaded.model.parameters())


def test_written_and_imported_model_files_are_ordinary_files_not_private(tmp_path, monkeypatch):
    import os
    import stat

    if os.name == "nt":
        pytest.skip("POSIX permissions")
    model = tiny_swin()
    old = os.umask(0o022)
    try:
        path = tmp_path / "m.safetensors"
        save_model_file(path, model, make_metadata("stroke", model.config, name="m", patch_size=(32, 32, 32)))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644            # mkstemp alone would give 0600
        monkeypatch.setenv("LESIONFACTORIZER_MODELS", str(tmp_path / "store"))
        assert stat.S_IMODE(import_model(path, name="shared").stat().st_mode) == 0o644
    finally:
        os.umask(old)
