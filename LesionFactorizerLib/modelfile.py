"""Model files: one ``*.safetensors`` file holding the weights and a JSON metadata document.

Why safetensors: loading never unpickles, so a model file from a stranger cannot run code. The
metadata document (key ``lesionfactorizer`` inside the safetensors ``__metadata__``) says
everything needed to use the weights correctly; its fields and rules are
:class:`LesionFactorizerLib.core.spec.ModelSpec`, which every reader parses it into.

The torch-free half (:func:`read_metadata`, :func:`read_spec`, :func:`verify_file`, model search)
parses the safetensors header itself, with size checks, so the Slicer GUI process can list and
describe models without torch, and a truncated or tampered file gives a :class:`UserError`.
``weights.sha256`` is the SHA-256 of the tensor data section (everything after the header), so
tampering with weights is detected; the whole-file SHA-256 is the model's identity in reports.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from LesionFactorizerLib.core.checksums import sha256, sha256_split
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.spec import FORMAT, FORMAT_VERSION, ModelSpec, Preprocessing, parse_spec

METADATA_KEY = "lesionfactorizer"
MODEL_SUFFIX = ".safetensors"
ENV_MODELS = "LESIONFACTORIZER_MODELS"
DEFAULT_USER_MODELS = Path("~/.lesionfactorizer/models")

# The safetensors loader refuses larger headers; the torch-free checks (import, verify --quick,
# listing) apply the same limit so that they never accept a file that loading rejects.
_MAX_HEADER = 100_000_000
_DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass
class ModelHeader:
    """What the safetensors header of a model file says (no weights loaded)."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, dict[str, Any]]
    header_size: int
    file_size: int

    @property
    def data_offset(self) -> int:
        return 8 + self.header_size


@dataclass
class LoadedModel:
    model: Any            # torch.nn.Module in eval mode
    metadata: dict[str, Any]
    path: Path
    sha256: str           # of the whole file
    weights_sha256: str = ""    # of the tensor data section (checked against the metadata)
    header: ModelHeader | None = None
    spec: ModelSpec | None = None   # the metadata, parsed

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.path.stem)


# ------------------------------------------------------------------------------------------------
# Reading (torch-free)
# ------------------------------------------------------------------------------------------------
def read_header(path: str | os.PathLike) -> ModelHeader:
    """Parse and sanity-check the safetensors header; raise :class:`UserError` on any damage."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; give an existing .safetensors file or a model name "
                        "(see `lesion-factorizer models list`)")
    size = path.stat().st_size
    bad = f"model file {path} is damaged or not a LesionFactorizer model"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{bad} (only {size} bytes); download or export it again")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER or 8 + n > size:
            raise UserError(f"{bad} (header size {n} does not fit the file size {size}: truncated?); "
                            "download or export it again")
        raw = f.read(n)
    if not raw.startswith(b"{"):
        raise UserError(f"{bad} (the header is not a JSON object); download or export it again")
    header = _json_or_none(raw)
    if not isinstance(header, dict):
        raise UserError(f"{bad} (unreadable header); download or export it again")
    meta_raw = header.pop("__metadata__", None) or {}
    if not isinstance(meta_raw, dict) or not all(isinstance(v, str) for v in meta_raw.values()):
        raise UserError(f"{bad} (its __metadata__ must map names to text); download or export it again")
    data_size = size - 8 - n
    end_max = 0
    spans = []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            begin, end = _whole(begin), _whole(end)
            count = 1
            for s in shape:
                if _whole(s) < 0:
                    raise ValueError
                count *= s
            expected = count * _DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{bad} (tensor {name!r} has an invalid entry)") from None
        if not (0 <= begin <= end) or end - begin != expected:
            raise UserError(f"{bad} (tensor {name!r}: offsets do not match its shape)")
        if end > data_size:
            raise UserError(f"{bad} (tensor {name!r} ends at byte {end} but the file holds only {data_size} "
                            "bytes of data: truncated?); download or export it again")
        end_max = max(end_max, end)
        spans.append((begin, end))
    if end_max != data_size:
        raise UserError(f"{bad} ({data_size - end_max} unexpected bytes after the tensors)")
    spans.sort()
    for (b0, e0), (b1, _) in zip([(0, 0)] + spans, spans):
        if b1 != e0:   # the safetensors loader requires the tensors to tile the data section
            raise UserError(f"{bad} ({'overlapping tensors' if b1 < e0 else 'a gap between tensors'})")
    if METADATA_KEY not in meta_raw:
        raise UserError(f"{path} is a safetensors file without LesionFactorizer metadata; convert it with a "
                        "training export or `lesion-factorizer models import`")
    metadata = _json_or_none(meta_raw[METADATA_KEY])
    if not isinstance(metadata, dict):
        raise UserError(f"{bad} (its metadata is not a JSON object)")
    return ModelHeader(path, metadata, header, n, size)


def _json_or_none(text: str | bytes) -> Any:
    """Parsed JSON, or None when it is not valid (including nesting too deep for the parser: one
    hostile file must not break listing every other model)."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError):
        return None


def nonfinite_tensors(header: ModelHeader, data: bytes | memoryview) -> list[tuple[str, int]]:
    """(tensor name, count) of every floating-point tensor holding NaN or ±inf, from the raw data
    section (torch-free: an all-ones exponent field is exactly what NaN and inf share)."""
    import numpy as np

    # dtype → (unsigned view, exponent mask); F8_E4M3 has no inf and NaN only as S.1111.111
    masks = {"F64": (np.uint64, 0x7FF0000000000000), "F32": (np.uint32, 0x7F800000),
             "F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80), "F8_E5M2": (np.uint8, 0x7C),
             "F8_E4M3": (np.uint8, 0x7F)}
    bad = []
    for name, info in header.tensors.items():
        if info["dtype"] not in masks:
            continue
        view, mask = masks[info["dtype"]]
        begin, end = info["data_offsets"]
        dtype = np.dtype(view).newbyteorder("<")   # safetensors data is little-endian
        bits = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        count = int(np.count_nonzero((bits & view(mask)) == view(mask)))
        if count:
            bad.append((name, count))
    return bad


def check_finite_weights(header: ModelHeader, data: bytes | memoryview) -> None:
    """Refuse weights with NaN/inf: such a network outputs NaN, which thresholds to "no lesion"."""
    bad = nonfinite_tensors(header, data)
    if bad:
        listed = ", ".join(f"{name} ({count})" for name, count in bad[:3])
        raise UserError(f"model file {header.path} has NaN or infinite weights in {len(bad)} tensor(s): {listed}; "
                        "the training run diverged or the file was altered: use another checkpoint or model")


def _data_section(header: ModelHeader):
    """The tensor data section of a model file, memory-mapped (read-only, no copy)."""
    import numpy as np

    if header.file_size == header.data_offset:
        return b""
    return np.memmap(header.path, dtype=np.uint8, mode="r", offset=header.data_offset)


def _whole(value: Any) -> int:
    """A JSON whole number; anything else (text, 2.5, true, null) raises ValueError/TypeError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"not a whole number: {value!r}")
    return value


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The model file's metadata document, checked for format and consistency (torch-free)."""
    header = read_header(path)
    parse_spec(header.metadata, where=str(path))
    return header.metadata


def read_spec(path: str | os.PathLike) -> ModelSpec:
    """The model file's :class:`~LesionFactorizerLib.core.spec.ModelSpec` (torch-free)."""
    return parse_spec(read_header(path).metadata, where=str(path))


def file_sha256(path: str | os.PathLike) -> str:
    return sha256(path)


def _checksum_failed(path: Path) -> UserError:
    return UserError(f"model file {path} failed its checksum (weights were modified or damaged); "
                     "download or export it again")


def verify_file(path: str | os.PathLike) -> dict[str, Any]:
    """Torch-free integrity check: header, metadata and the weights checksum.

    Returns ``{"path", "name", "task", "sha256", "weights_sha256"}``; raises :class:`UserError`.
    """
    header = read_header(path)
    parse_spec(header.metadata, where=str(path))
    whole, weights = sha256_split(Path(path), header.data_offset)
    if weights != header.metadata["weights"]["sha256"]:
        raise _checksum_failed(Path(path))
    check_finite_weights(header, _data_section(header))
    return _file_info(header, whole, weights)


def _file_info(header: ModelHeader, sha256: str, weights_sha256: str) -> dict[str, Any]:
    return {"path": str(header.path), "name": header.metadata.get("name") or header.path.stem,
            "task": header.metadata["task"], "sha256": sha256, "weights_sha256": weights_sha256}


# ------------------------------------------------------------------------------------------------
# Metadata construction and saving
# ------------------------------------------------------------------------------------------------
def make_metadata(task: str, architecture: dict[str, Any], *, name: str = "", inputs: list[str] | None = None,
                  outputs: dict[str, Any] | None = None, spacing: list[float] | None = (1.0, 1.0, 1.0),
                  patch_size: list[int] | tuple[int, ...] = (128, 128, 128), description: str = "",
                  license: str = "Apache-2.0", training: dict[str, Any] | None = None,
                  postprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete metadata document with task defaults filled in.

    ``architecture`` is ``model.config`` (``{"architecture": name, "kwargs": {...}}``) or already
    ``{"name": ..., "kwargs": ...}``.
    """
    from LesionFactorizerLib import __version__
    from LesionFactorizerLib.core.outputspec import OutputSpec
    from LesionFactorizerLib.core.tasks import get_task

    t = get_task(task)
    arch_name = architecture.get("name", architecture.get("architecture"))
    kwargs = copy.deepcopy(dict(architecture.get("kwargs", {})))
    if outputs is None:
        outputs = OutputSpec.for_network(t, kwargs.get("out_channels", len(t.output_channels))).as_outputs()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "license": license,
        "task": t.name,
        "inputs": list(inputs) if inputs is not None else t.required_inputs,
        "architecture": {"name": arch_name, "kwargs": kwargs},
        "outputs": outputs,
        "labels": [{"value": lb.value, "name": lb.name} for lb in t.labels],
        "preprocessing": {"spacing": None if spacing is None else [float(s) for s in spacing],
                          "patch_size": [int(p) for p in patch_size],
                          "normalization": Preprocessing.normalization,
                          "crop_foreground": Preprocessing.crop_foreground},
        "postprocessing": dict(postprocessing or {}),
        "training": dict(training or {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "library_version": __version__,
    }
    return meta


def save_model_file(path: str | os.PathLike, model: Any, metadata: dict[str, Any], half: bool = False) -> str:
    """Write ``model``'s weights and ``metadata`` to ``path`` atomically; return the file's SHA-256.

    ``half=True`` stores floating-point tensors as float16 (half the size; loading casts back to
    float32). The architecture in the metadata is taken from ``model.config`` when present.
    """
    import torch
    from safetensors.torch import save

    meta = copy.deepcopy(metadata)
    config = getattr(model, "config", None)
    if config:
        meta["architecture"] = {"name": config["architecture"], "kwargs": copy.deepcopy(config["kwargs"])}
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if half and value.is_floating_point():
            value = value.to(torch.float16)
        tensors[key] = value.contiguous().clone()
    meta.setdefault("weights", {})
    meta["weights"].update({"dtype": "float16" if half else "float32", "sha256": "", "tensors": len(tensors)})
    # The checksum covers the data section, which does not depend on the metadata: serialise once
    # with a placeholder to learn the data bytes, then write the final file.
    blob = save(tensors, metadata={METADATA_KEY: json.dumps(meta)})
    (n,) = struct.unpack("<Q", blob[:8])
    meta["weights"]["sha256"] = sha256_split(blob, 8 + n)[1]
    parse_spec(meta)
    blob = save(tensors, metadata={METADATA_KEY: json.dumps(meta)})
    path = Path(path)
    (n,) = struct.unpack("<Q", blob[:8])
    layout = {k: v for k, v in json.loads(blob[8:8 + n]).items() if k != "__metadata__"}
    check_finite_weights(ModelHeader(path, meta, layout, n, len(blob)), memoryview(blob)[8 + n:])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256(blob)


# ------------------------------------------------------------------------------------------------
# Loading (torch)
# ------------------------------------------------------------------------------------------------
def load_model_file(path_or_name: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Verify and load a model file by path or name; never unpickles. The file is read once and
    both checksums (weights, whole file) come from that one read."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    from LesionFactorizerLib.presets import build_architecture

    path = find_model(path_or_name)
    header = read_header(path)
    meta = header.metadata
    spec = parse_spec(meta, where=str(path))
    blob = path.read_bytes()
    if len(blob) != header.file_size:
        raise UserError(f"model file {path} changed while it was being read; try again")
    sha256, weights_sha256 = sha256_split(blob, header.data_offset)
    if weights_sha256 != meta["weights"]["sha256"]:
        raise _checksum_failed(path)
    check_finite_weights(header, memoryview(blob)[header.data_offset:])
    arch = spec.architecture
    _check_architecture_matches(header, arch, build_architecture)
    model = build_architecture(arch.name, arch.kwargs)   # its shapes were checked on the meta device above
    try:
        tensors = load_bytes(blob)
    except SafetensorError as exc:
        raise UserError(f"model file {path} is damaged ({exc}); download or export it again") from None
    del blob
    expected = model.state_dict()
    state = {k: (v.to(expected[k].dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    model.to(torch.device(device))
    return LoadedModel(model, meta, path, sha256, weights_sha256, header, spec)


def _check_architecture_matches(header: ModelHeader, arch, build) -> None:
    """Build the network on torch's meta device (shapes only, no memory) and compare its tensors with
    the file's before anything is allocated: metadata claiming huge widths must not exhaust memory."""
    import torch

    path = header.path
    try:
        with torch.device("meta"):
            probe = build(arch.name, arch.kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise UserError(f"model file {path}: cannot build architecture {arch.name!r} ({_first(exc)}); "
                        "the file may need a newer lesion-factorizer") from None
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    stored = {k: tuple(info["shape"]) for k, info in header.tensors.items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = [k for k in expected if k in stored and stored[k] != expected[k]]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"wrong shape {wrong[:3]}")
        raise UserError(f"model file {path}: weights do not match architecture {arch.name!r} ({detail}); "
                        "the file is inconsistent, export it again")


def _first(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def verify_model(path_or_name: str | os.PathLike) -> dict[str, Any]:
    """Full check: what :func:`verify_file` checks, plus building the architecture and loading the
    weights (one read of the file)."""
    loaded = load_model_file(path_or_name)
    info = _file_info(loaded.header, loaded.sha256, loaded.weights_sha256)
    info["parameters"] = sum(p.numel() for p in loaded.model.parameters())
    return info


def _temp_file(folder: Path, name: str) -> tuple[int, str]:
    """A new hidden temporary file beside ``name`` for an atomic write. Unlike mkstemp's private
    0600 files it gets the umask's ordinary mode, as a model file should (shared model folders,
    files shipped in the repository); the umask is applied by the kernel, not read and reset,
    which would race with other threads (the Slicer GUI)."""
    import secrets

    while True:
        tmp = str(folder / f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


# ------------------------------------------------------------------------------------------------
# Finding models
# ------------------------------------------------------------------------------------------------
def bundled_model_dirs() -> list[Path]:
    """Models shipped with the package (installed package data) or the source/Slicer extension tree."""
    here = Path(__file__).resolve().parent
    return [here / "Resources" / "Models", here.parent / "Resources" / "Models"]


def user_model_dir() -> Path:
    """Where ``models import`` copies files: the first folder of LESIONFACTORIZER_MODELS, else ~/.lesionfactorizer/models."""
    env = os.environ.get(ENV_MODELS, "")
    first = next((p for p in env.split(os.pathsep) if p), "")
    return Path(first).expanduser() if first else DEFAULT_USER_MODELS.expanduser()


def model_search_path() -> list[tuple[str, Path]]:
    """(source, folder) in search order: user folders first, so a user can override a bundled model."""
    env = os.environ.get(ENV_MODELS, "")
    dirs = [("user", Path(p).expanduser()) for p in env.split(os.pathsep) if p]
    if not dirs:
        dirs = [("user", DEFAULT_USER_MODELS.expanduser())]
    dirs += [("bundled", d) for d in bundled_model_dirs()]
    seen, out = set(), []
    for source, d in dirs:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen:
            seen.add(key)
            out.append((source, d))
    return out


@dataclass
class ModelEntry:
    name: str
    path: Path
    source: str
    metadata: dict[str, Any] | None = None
    problem: str = ""
    spec: ModelSpec | None = None    # the metadata parsed (None when the file has a problem)


def list_models(task: str | None = None) -> list[ModelEntry]:
    """Every model file on the search path (damaged ones included, with their problem)."""
    entries = []
    for source, folder in model_search_path():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{MODEL_SUFFIX}")):
            try:
                meta = read_header(path).metadata
                entry = ModelEntry(path.stem, path, source, meta, spec=parse_spec(meta, where=str(path)))
            except UserError as exc:
                entry = ModelEntry(path.stem, path, source, None, str(exc))
            if task is None or (entry.metadata and entry.metadata.get("task") == task):
                entries.append(entry)
    return entries


def find_model(path_or_name: str | os.PathLike) -> Path:
    """A model file by path, or by name (file stem) on the search path."""
    text = str(path_or_name)
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate
    if text.endswith(MODEL_SUFFIX) or os.sep in text or (os.altsep and os.altsep in text):
        raise UserError(f"model file {text} does not exist; check the path")
    for _, folder in model_search_path():
        path = folder / f"{text}{MODEL_SUFFIX}"
        if path.is_file():
            return path
    names = sorted({e.name for e in list_models()})
    raise UserError(f"no model named {text!r}; installed models: {', '.join(names) or 'none'} "
                    f"(search path: {', '.join(str(d) for _, d in model_search_path())}); "
                    "give a .safetensors path or import one with `lesion-factorizer models import FILE`")


def default_model(task: str) -> Path:
    """The task's default model: its named default if installed, else the first model for the task."""
    from LesionFactorizerLib.core.tasks import get_task

    t = get_task(task)
    entries = [e for e in list_models(t.name) if not e.problem]
    for e in entries:
        if e.name == t.default_model:
            return e.path
    if entries:
        return entries[0].path
    raise UserError(f"no model for task {t.name!r} is installed; pass --model PATH, set {ENV_MODELS}, or import "
                    "one with `lesion-factorizer models import FILE`")


def check_model_name(name: str) -> str:
    """A model name is a plain file stem: it must not leave the model folder (``../x``, ``/abs``) nor hide."""
    import re

    if name.endswith(MODEL_SUFFIX):
        name = name[: -len(MODEL_SUFFIX)]
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}", name) or ".." in name:
        raise UserError(f"model name {name!r} is not a plain name; use letters, digits, '_', '-', '.' and '+' "
                        "(no folders), e.g. --name stroke-v2")
    return name


def import_model(source: str | os.PathLike, name: str | None = None, overwrite: bool = False) -> Path:
    """Verify ``source`` and copy it into the user model folder (atomically)."""
    source = Path(source)
    verify_file(source)
    name = check_model_name(name or source.stem)
    dest_dir = user_model_dir()
    dest = dest_dir / f"{name}{MODEL_SUFFIX}"
    if dest.exists() and not overwrite:
        raise UserError(f"{dest} already exists; pass --overwrite to replace it or --name to choose another name")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_file(dest_dir, dest.name)
        os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot write to the model folder {dest_dir} ({exc.strerror}); set {ENV_MODELS} to a "
                        "writable folder") from None
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest
