"""The window-NMF kernel (``window_nmf.c``) as a compiled library, and the call into it.

Eager PyTorch runs the Factorizer's rank-1 window NMF as batched products of tiny matrices (a C×C
Gram and a C×C folded projection per window, ``LocalMatricize._project_slab``), at a fraction of
the CPU's speed and with 4× the needed arithmetic; at full resolution that is most of a block's
time. The C kernel does the same arithmetic per window, only the heads' blocks, with the window's
rows in cache, and adds the result straight into the residual stream. Outputs equal the PyTorch
path's within float rounding (tested).

Where the library comes from, first found first (:func:`status` says which, or why none):

1. **Prebuilt**, beside this file: the extension's CMake (``LesionFactorizer/CMakeLists.txt``) and
   the wheel build (``setup.py``) compile it for the platform and write ``window_nmf.json`` next to
   it (``nn/kernelfile.py``). A build without a compiler still installs, without the library.
2. **Compiled here**, only when a developer sets ``LESION_FACTORIZER_NATIVE=build``: the system C
   compiler (``$CC``, else ``cc``/``gcc``/``clang``) builds it for this CPU into
   ``cache_dir()/native``, keyed by the source, compiler, flags and CPU, with the same manifest.
   The cache is used only when it is the user's own (``usercache.not_own``: nobody else can have
   planted a library there); a cached library that fails its check or to load is rebuilt once.

Otherwise the PyTorch path runs; no compiler is ever looked for by default (Windows has none, and
on macOS without the developer tools ``cc`` is a shim that asks to install them), nor for tensors
the kernel cannot take (CUDA, MPS). Every library is loaded only after its size and SHA-256 match
its manifest, so a damaged, truncated or swapped file is never mapped (a truncated library would
kill the process with SIGBUS); a refusal is one line from :func:`warning`, which
``run_inference`` adds to the run's warnings. ``LESION_FACTORIZER_NATIVE=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, NamedTuple

import torch

from LesionFactorizerLib.nn import cputhreads
from LesionFactorizerLib.nn.kernelfile import PREBUILT, SOURCE, manifest, sha256, verified
from LesionFactorizerLib.core.usercache import cache_dir, make_own_folder, not_own

ENV = "LESION_FACTORIZER_NATIVE"   # unset or 1: prebuilt only; build: also compile into the cache; 0: off
FLAGS = (("-O3", "-march=native"), ("-O3",))  # tuned for this CPU; plain if the compiler refuses
SUFFIX = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")

_lock = threading.Lock()
_state: dict = {}

_L, _F, _P = ctypes.c_longlong, ctypes.c_float, ctypes.c_void_p   # lf_int is long long


class Kernels(NamedTuple):
    """The library's functions by their C names (``window_nmf.c``); :data:`_SIGNATURES` holds their
    ctypes argument and result types in the same shape."""
    lf_window_nmf_rank1: Any
    lf_layer_norm_rows: Any


_SIGNATURES = Kernels(
    lf_window_nmf_rank1=([_P, _P, _P, _L, _L, _L, _L, _L, _L, _L, _L, _L, _P, _P, _L, _F, _F, _L, _L, _L],
                         ctypes.c_int),
    lf_layer_norm_rows=([_P, _P, _L, _L, _P, _P, _F], None),
)


def library() -> Kernels | None:
    """The loaded kernels, or None (see :func:`status`). Found on first use."""
    with _lock:
        if not _state:
            _state.update(_load())
    return _state["lib"]


def status() -> str:
    """What the window NMF runs on, for reports: ``native (prebuilt, <compiler>)``,
    ``native (built here, <compiler>)``, ``pytorch (<why>)``, or ``not used`` when no eager window
    NMF has run in this process."""
    if not _state:
        return "not used"
    return f"native ({_state['compiler']})" if _state["lib"] is not None else f"pytorch ({_state['why']})"


def warning() -> str | None:
    """One line when a library was refused or failed its check (the run went on without it or with
    a rebuilt one), else None."""
    return _state.get("warning")


def _compiler() -> str | None:
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"].split()[0])
    return next((path for path in map(shutil.which, ("cc", "gcc", "clang")) if path), None)


def _cpu() -> str:
    """What the binary's ``-march=native`` depends on: a cache shared between machines (a network
    home) must never hand one CPU another CPU's instructions."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor()


def _load() -> dict:
    mode = os.environ.get(ENV, "1")
    if mode == "0":
        return {"lib": None, "why": f"turned off by {ENV}=0"}
    if mode not in ("1", "build"):
        why = f"{ENV}={mode!r} is not 0, 1 or build"
        return {"lib": None, "why": why, "warning": f"window-NMF kernel not used: {why}"}
    if not SOURCE.is_file():
        return {"lib": None, "why": f"the kernel source {SOURCE.name} is not installed"}
    source = sha256(SOURCE)
    note = None
    if PREBUILT.exists():
        kernels, record, why = _open(PREBUILT, source, own=False)
        if kernels is not None:
            return {"lib": kernels, "compiler": f"prebuilt, {record.get('compiler', '?')}",
                    "path": PREBUILT.parent / record["library"]}
        why = f"the installed kernel is not used: {why}"
        note = f"{why}; the slower PyTorch path runs" if mode != "build" else why
    else:
        why = f"no prebuilt kernel in this installation ({ENV}=build compiles one)"
    if mode != "build":
        return {"lib": None, "why": why, "warning": note}
    state = _load_cached(source)
    if note:
        state["warning"] = "; ".join(filter(None, [note, state.get("warning")]))
    return state


def _open(record_path: Path, source: str, *, own: bool) -> tuple:
    """The kernels of the library ``record_path`` describes, its record, and why not; the library is
    mapped only after :func:`kernelfile.verified` passed."""
    path, record, why = verified(record_path, source, own=own)
    if path is None:
        return None, {}, why
    try:
        lib = ctypes.CDLL(str(path))
        functions = {name: getattr(lib, name) for name in Kernels._fields}
    except (OSError, AttributeError) as exc:
        return None, {}, f"{path} cannot be loaded ({exc})"
    for name, (argtypes, restype) in _SIGNATURES._asdict().items():
        functions[name].argtypes, functions[name].restype = argtypes, restype
    return Kernels(**functions), record, ""


def _load_cached(source: str) -> dict:
    """The developer path: compiled for this CPU into the user's own cache folder."""
    folder = cache_dir() / "native"
    try:
        make_own_folder(folder)
    except OSError as exc:   # e.g. a read-only cache folder
        return {"lib": None, "why": f"building it failed: {exc}"}
    if why := not_own(folder):
        why = f"the kernel cache is not safe to load code from: {why}"
        return {"lib": None, "why": why, "warning": f"{why}; the slower PyTorch path runs"}
    cc = _compiler()
    if cc is None:
        return {"lib": None, "why": "no C compiler found; set CC to use one"}
    error, stale = "", ""
    for flags in FLAGS:
        key = hashlib.sha256(b"\0".join([source.encode(), cc.encode(), " ".join(flags).encode(),
                                         platform.platform().encode(), _cpu().encode()])).hexdigest()[:16]
        library, record_path = folder / f"window_nmf-{key}{SUFFIX}", folder / f"window_nmf-{key}.json"
        label = f"built here, {Path(cc).name} {' '.join(flags)}"
        if record_path.exists() or library.exists():
            kernels, _, stale = _open(record_path, source, own=True)
            if kernels is not None:
                return {"lib": kernels, "compiler": label, "path": library}
        error = _build(cc, flags, library, record_path, label)
        if not error:
            kernels, _, error = _open(record_path, source, own=True)
            if kernels is not None:
                return {"lib": kernels, "compiler": label, "path": library,
                        "warning": f"rebuilt the cached window-NMF kernel: {stale}" if stale else None}
    why = f"building it with {cc} failed: {(error.strip().splitlines() or ['?'])[-1]}"
    return {"lib": None, "why": why, "warning": f"the cached window-NMF kernel is not used: {stale}; {why}" if stale else None}


def _build(cc: str, flags: tuple[str, ...], path: Path, record_path: Path, label: str) -> str:
    """Compiles into a temporary file beside ``path``, then renames it and writes its manifest the
    same way: concurrent runs never load a half-written file. Returns the compiler's error output,
    or "" on success."""
    try:
        fd, tmp = tempfile.mkstemp(suffix=SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        return str(exc)
    try:
        done = subprocess.run([cc, *flags, "-std=c99", "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-lm"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return done.stderr or f"exit status {done.returncode}"
        os.chmod(tmp, 0o700)   # the linker applies the umask: 002 would leave it group-writable
        os.replace(tmp, path)
        fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest(path, label.removeprefix("built here, ")), f)
        os.replace(tmp, record_path)
        return ""
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def window_nmf_rank1(z: torch.Tensor, out: torch.Tensor, maps: torch.Tensor | None, *, heads: int,
                     window: int, shift: int, weight: torch.Tensor, v0: torch.Tensor, iters: int,
                     eps: float, scale: float, drop_head: int | None) -> bool:
    """``out += scale · W · reconstruction`` of one window partition of ``z`` (and the scaled spatial
    factors into ``maps``), by the kernel on ``torch.get_num_threads()`` worker threads
    (``nn/cputhreads.py``); see ``window_nmf.c`` for the arguments. Returns False, doing nothing,
    when the kernel is not available or the tensors are not contiguous float32 on the CPU."""
    tensors = [z, out, weight, v0] + ([maps] if maps is not None else [])
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors):
        return False   # decided before looking for the library: a GPU run never loads or builds it
    lib = library()
    if lib is None:
        return False
    b, d, h, w, c = z.shape
    windows = b * (d // window) * (h // window) * (w // window)
    args = (z.data_ptr(), out.data_ptr(), None if maps is None else maps.data_ptr(), b, d, h, w, heads,
            c // heads, out.shape[-1], window, shift, weight.data_ptr(), v0.data_ptr(), iters, eps, scale,
            -1 if drop_head is None else drop_head)
    # windows of one partition never overlap: ranges of them run on parallel threads (ctypes
    # releases the GIL during the call)
    if any(cputhreads.map_ranges(windows, lambda first, last: lib.lf_window_nmf_rank1(*args, first, last))):
        raise MemoryError("the window NMF kernel could not allocate its scratch memory")
    return True


def layer_norm_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
                    out: torch.Tensor) -> bool:
    """``out = layer_norm(x)`` over the last axis of the rows ``x`` (rows, C), by the kernel on this
    thread. Returns False, doing nothing, when the kernel is not available or the tensors are not
    contiguous float32 on the CPU (or there is no bias): the caller then uses PyTorch's."""
    tensors = [x, out, weight, bias]
    if bias is None or x.dim() != 2 or out.shape != x.shape or not weight.shape == bias.shape == x.shape[1:]:
        return False
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors):
        return False
    lib = library()
    if lib is None:
        return False
    lib.lf_layer_norm_rows(x.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1], weight.data_ptr(),
                           bias.data_ptr(), eps)
    return True
