"""Poisoned, hostile or oversized model files (issue 13 items 5, 11, 12, 13, 14; issue 15 item 8):
refused the same way by load, ``verify``, ``verify --quick``, ``import`` and training ``export``."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
import yaml
from helpers import main_in_process, save_threshold_model, write_case

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.modelfile import (import_model, load_model_file, make_metadata, read_header,
                                           save_model_file, verify_file, verify_model)
from LesionFactorizerLib.pipeline.segment import segment_case
from LesionFactorizerLib.core.settings import SegmentSettings


def poison(path: Path, value: float = float("nan")) -> Path:
    """Put ``value`` into the first float32 weight and fix the checksum, as an attacker (or a
    diverged run exported by another tool) would: the file is internally consistent."""
    header = read_header(path)
    data = bytearray(path.read_bytes())
    name, info = next((k, v) for k, v in header.tensors.items() if v["dtype"] == "F32")
    struct.pack_into("<f", data, header.data_offset + info["data_offsets"][0], value)
    old = header.metadata["weights"]["sha256"].encode()
    new = hashlib.sha256(bytes(data[header.data_offset:])).hexdigest().encode()
    head = bytes(data[: header.data_offset]).replace(old, new)      # same length: offsets unchanged
    path.write_bytes(head + bytes(data[header.data_offset:]))
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_every_reader(tmp_path, value, monkeypatch):
    path = poison(Path(save_threshold_model(tmp_path / "thr.safetensors")), value)
    for check in (verify_file, verify_model, load_model_file):
        with pytest.raises(UserError, match="NaN or infinite weights"):
            check(path)
    monkeypatch.setenv("LESIONFACTORIZER_MODELS", str(tmp_path / "models"))
    with pytest.raises(UserError, match="NaN or infinite weights"):
        import_model(path)
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
    for args in (["models", "verify", path], ["models", "verify", "--quick", path]):
        proc = main_in_process(*args)
        assert proc.returncode == 2 and "NaN or infinite weights" in proc.stdout, proc.stdout + proc.stderr


def test_saving_or_exporting_non_finite_weights_is_refused(tmp_path):
    from LesionFactorizerLib.presets import build_model
    from LesionFactorizerLib.training import checkpoint_io
    from LesionFactorizerLib.training.config import CONFIG_DIR, load_config
    from LesionFactorizerLib.training.export import export_checkpoint

    model = torch.nn.Conv3d(2, 1, 1)
    with torch.no_grad():
        model.weight[0, 0, 0, 0, 0] = float("nan")
    meta = make_metadata("stroke", {"name": "threshold-net", "kwargs": {"in_channels": 2, "out_channels": 1}})
    with pytest.raises(UserError, match="NaN or infinite weights"):
        save_model_file(tmp_path / "nan.safetensors", model, meta)
    assert not list(tmp_path.iterdir())

    config = tmp_path / "unet.yaml"
    config.write_text(yaml.safe_dump({"base": str(CONFIG_DIR / "ms-new-base.yaml"),
                                      "data": {"root": str(tmp_path)},
                                      "model": {"preset": "unet-msseg2",
                                                "overrides": {"widths": [8, 8, 8, 8, 8]}}}), encoding="utf-8")
    cfg = load_config(config)
    net = build_model(cfg.model.preset, **cfg.model.overrides)
    state = {f"model.{k}": v.clone() for k, v in net.state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[first].view(-1)[1] = float("inf")       # a diverged run
    ckpt = tmp_path / "run" / "checkpoints" / f"last{checkpoint_io.SUFFIX}"
    ckpt.parent.mkdir(parents=True)
    checkpoint_io.save_checkpoint_file({"state_dict": state, "global_step": 3,
                                        "hyper_parameters": {"config": cfg.to_dict(), "fold": None}}, ckpt)
    with pytest.raises(UserError, match="NaN or infinite weights"):
        export_checkpoint(ckpt, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.slow
def test_non_finite_network_output_fails_the_run(tmp_path):
    """Finite weights, but outputs that overflow float32: no result rather than a wrong one."""
    from LesionFactorizerLib.presets import build_architecture

    net = build_architecture("threshold-net", {"in_channels": 2, "out_channels": 1, "threshold": 0.0,
                                               "gain": 1e38})
    model = tmp_path / "overflow.safetensors"
    save_model_file(model, net, make_metadata("stroke", net.config, patch_size=(32, 32, 32), spacing=None))
    paths = write_case(tmp_path / "in")
    with pytest.raises(UserError, match="NaN or infinite output"):
        segment_case(paths, tmp_path / "out", SegmentSettings(task="stroke", models=[str(model)], overview=False))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_deeply_nested_header_is_skipped_by_listing_and_default_model(tmp_path, monkeypatch):
    user = tmp_path / "models"
    user.mkdir()
    save_threshold_model(user / "good.safetensors")
    nested = b"[" * 100000 + b"]" * 100000
    header = b'{"__metadata__": {"lesionfactorizer": "x"}, "w": ' + nested + b"}"
    (user / "aaa-hostile.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    meta_nested = json.dumps({"lesionfactorizer": "[" * 100000 + "]" * 100000})
    header2 = ('{"__metadata__": ' + meta_nested + "}").encode()
    (user / "aab-hostile.safetensors").write_bytes(struct.pack("<Q", len(header2)) + header2)
    env = {**os.environ, "LESIONFACTORIZER_MODELS": str(user)}
    proc = main_in_process("models", "list", "--task", "stroke", env=env)
    assert proc.returncode == 0 and "good" in proc.stdout, proc.stderr
    proc = main_in_process("models", "list", env=env)
    assert proc.returncode == 0 and proc.stdout.count("DAMAGED") == 2, proc.stdout + proc.stderr
    monkeypatch.setenv("LESIONFACTORIZER_MODELS", str(user))
    paths = write_case(tmp_path / "in")
    outputs = segment_case(paths, str(tmp_path / "out"), SegmentSettings(task="stroke", overview=False)).outputs
    assert Path(outputs["report"]).is_file()


@pytest.mark.parametrize("name", ["../../evil", "{tmp}/evil", "sub/evil", ".hidden", "..", "a\\b"])
def test_import_name_cannot_leave_the_model_folder(tmp_path, monkeypatch, name):
    name = name.format(tmp=tmp_path)              # an absolute path
    model = save_threshold_model(tmp_path / "thr.safetensors")
    user = tmp_path / "deep" / "models"
    monkeypatch.setenv("LESIONFACTORIZER_MODELS", str(user))
    with pytest.raises(UserError, match="not a plain name"):
        import_model(model, name=name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["thr.safetensors"]
    assert import_model(model, name="stroke-v2.1") == user / "stroke-v2.1.safetensors"


def test_header_the_loader_would_reject_is_rejected_by_quick_checks_and_import(tmp_path, monkeypatch):
    """A 99 MiB header (over safetensors' 100 MB limit) passed import and verify --quick."""
    good = Path(save_threshold_model(tmp_path / "thr.safetensors"))
    header = read_header(good)
    raw = good.read_bytes()
    text = raw[8: header.data_offset]
    padded = text + b" " * (99 * 2**20 - len(text))
    big = tmp_path / "big.safetensors"
    big.write_bytes(struct.pack("<Q", len(padded)) + padded + raw[header.data_offset:])
    for check in (verify_file, verify_model):
        with pytest.raises(UserError, match="header size"):
            check(big)
    monkeypatch.setenv("LESIONFACTORIZER_MODELS", str(tmp_path / "models"))
    with pytest.raises(UserError, match="header size"):
        import_model(big)


def test_gap_between_tensors_is_rejected_without_torch_as_the_loader_does(tmp_path):
    good = Path(save_threshold_model(tmp_path / "thr.safetensors"))
    header = read_header(good)
    layout = {k: dict(v) for k, v in header.tensors.items()}
    for k, v in layout.items():   # shift every tensor by 4 bytes: a gap at the start
        v["data_offsets"] = [v["data_offsets"][0] + 4, v["data_offsets"][1] + 4]
    raw = good.read_bytes()
    data = b"\0" * 4 + raw[header.data_offset:]
    meta = json.loads(raw[8:header.data_offset])["__metadata__"]
    meta_doc = json.loads(meta["lesionfactorizer"])
    meta_doc["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    text = json.dumps({"__metadata__": {"lesionfactorizer": json.dumps(meta_doc)}, **layout}).encode()
    bad = tmp_path / "gap.safetensors"
    bad.write_bytes(struct.pack("<Q", len(text)) + text + data)
    with pytest.raises(UserError, match="gap between tensors"):
        verify_file(bad)


def test_metadata_claiming_huge_widths_is_refused_before_allocating(tmp_path):
    model = torch.nn.Conv3d(2, 1, 1)           # what the file really holds: a few bytes
    meta = make_metadata("stroke", {"name": "resunet8", "kwargs": {"in_channels": 2, "out_channels": 1,
                                                                   "features": 400000}})
    path = tmp_path / "huge.safetensors"
    save_model_file(path, model, meta)
    with pytest.raises(UserError, match="do not match architecture"):
        load_model_file(path)
    proc = main_in_process("models", "import", path, env={**os.environ, "LESIONFACTORIZER_MODELS": str(tmp_path / "models")})
    assert proc.returncode == 2 and "do not match architecture" in proc.stderr, proc.stderr   # as `verify`
    assert not (tmp_path / "models").exists()
