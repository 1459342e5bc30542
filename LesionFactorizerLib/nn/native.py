"""The window-NMF kernel (``window_nmf.c``) compiled for this machine, and the call into it.

Eager PyTorch runs the Factorizer's rank-1 window NMF as batched products of tiny matrices (a C×C
Gram and a C×C folded projection per window, ``LocalMatricize._project_slab``), at a fraction of
the CPU's speed and with 4× the needed arithmetic; at full resolution that is most of a block's
time. The C kernel does the same arithmetic per window, only the heads' blocks, with the window's
rows in cache, and adds the result straight into the residual stream.

It is built once per machine by the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into
``cache_dir()/native``, keyed by the source, compiler, flags and CPU, and loaded with ``ctypes``
(plain C, no torch headers: a build takes about half a second). Without a compiler, or if the build
fails, the PyTorch path runs and :func:`status` says why. ``LESION_FACTORIZER_NATIVE=0`` turns the
kernel off. Outputs equal the PyTorch path's within float rounding (tested).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from LesionFactorizerLib.usercache import cache_dir

SOURCE = Path(__file__).with_name("window_nmf.c")
FLAGS = (("-O3", "-march=native"), ("-O3",))  # tuned for this CPU; plain if the compiler refuses
SUFFIX = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")

_lock = threading.Lock()
_state: dict = {}
_pool: ThreadPoolExecutor | None = None

_L, _F, _P = ctypes.c_longlong, ctypes.c_float, ctypes.c_void_p   # lf_int is long long
_ARGTYPES = [_P, _P, _P, _L, _L, _L, _L, _L, _L, _L, _L, _L, _P, _P, _L, _F, _F, _L, _L, _L]


def library():
    """The loaded kernel library, or None (see :func:`status`). Built on first use."""
    with _lock:
        if not _state:
            _state.update(_load())
    return _state["lib"]


def status() -> str:
    """What the window NMF runs on, for reports: ``native (<compiler>)``, ``pytorch (<why>)``, or
    ``not used`` when no eager window NMF has run in this process."""
    if not _state:
        return "not used"
    return f"native ({_state['compiler']})" if _state["lib"] is not None else f"pytorch ({_state['why']})"


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
    if os.environ.get("LESION_FACTORIZER_NATIVE", "1") == "0":
        return {"lib": None, "why": "turned off by LESION_FACTORIZER_NATIVE=0"}
    cc = _compiler()
    if cc is None:
        return {"lib": None, "why": "no C compiler found; set CC to use one"}
    if not SOURCE.is_file():
        return {"lib": None, "why": f"the kernel source {SOURCE.name} is not installed"}
    source = SOURCE.read_bytes()
    folder = cache_dir() / "native"
    error = ""
    for flags in FLAGS:
        key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(flags).encode(),
                                         platform.platform().encode(), _cpu().encode()])).hexdigest()[:16]
        path = folder / f"window_nmf-{key}{SUFFIX}"
        if not path.exists():
            error = _build(cc, flags, path)
            if error:
                continue
        try:
            lib = ctypes.CDLL(str(path))
            fn = lib.lf_window_nmf_rank1
        except (OSError, AttributeError) as exc:
            error = str(exc)
            continue
        fn.argtypes, fn.restype = _ARGTYPES, ctypes.c_int
        return {"lib": fn, "compiler": f"{Path(cc).name} {' '.join(flags)}", "path": path}
    last = (error.strip().splitlines() or ["?"])[-1]
    return {"lib": None, "why": f"building it with {cc} failed: {last}"}


def _build(cc: str, flags: tuple[str, ...], path: Path) -> str:
    """Compiles into a temporary file beside ``path`` and renames it: concurrent runs never load a
    half-written library. Returns the compiler's error output, or "" on success."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as exc:   # e.g. a read-only cache folder
        return str(exc)
    try:
        done = subprocess.run([cc, *flags, "-std=c99", "-shared", "-fPIC", "-o", tmp, str(SOURCE)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return done.stderr or f"exit status {done.returncode}"
        os.replace(tmp, path)
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
    factors into ``maps``), by the kernel on ``torch.get_num_threads()`` threads; see
    ``window_nmf.c`` for the arguments. Returns False, doing nothing, when the kernel is not
    available or the tensors are not contiguous float32 on the CPU."""
    fn = library()
    tensors = [z, out, weight, v0] + ([maps] if maps is not None else [])
    if fn is None or not all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
                             for t in tensors):
        return False
    b, d, h, w, c = z.shape
    windows = b * (d // window) * (h // window) * (w // window)
    args = (z.data_ptr(), out.data_ptr(), None if maps is None else maps.data_ptr(), b, d, h, w, heads,
            c // heads, out.shape[-1], window, shift, weight.data_ptr(), v0.data_ptr(), iters, eps, scale,
            -1 if drop_head is None else drop_head)
    threads = max(1, min(torch.get_num_threads(), windows))
    bounds = [windows * i // threads for i in range(threads + 1)]
    # ctypes releases the GIL during the call, so Python threads run the window ranges in parallel
    if threads == 1:
        codes = [fn(*args, 0, windows)]
    else:
        codes = list(_executor(threads).map(lambda i: fn(*args, bounds[i], bounds[i + 1]), range(threads)))
    if any(codes):
        raise MemoryError("the window NMF kernel could not allocate its scratch memory")
    return True


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lf-window-nmf")
        return _pool
