"""Our own processes keep freed feature-map memory for the next window; importing the library (even
``LesionFactorizerLib.cli``) does not.

Read through glibc's own accounting (``mallinfo2``): memory served by ``mmap`` (``hblkhd``) is
faulted in afresh on every allocation; memory in the heap (``arena``) is reused.
"""

import json
import os
import subprocess
import sys

import pytest

from LesionFactorizerLib.processmemory import USER_MALLOC_VARS

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only"), pytest.mark.slow]

PROBE = r"""
import ctypes, json, sys
import LesionFactorizerLib.cli, LesionFactorizerLib.pipeline.inference   # imports alone change nothing
if sys.argv[1] == "cli":   # what `python -m LesionFactorizerLib` (CLI, Slicer worker) runs
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        LesionFactorizerLib.cli.main([])
import torch

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
mallinfo = ctypes.CDLL(None).mallinfo2
mallinfo.restype = Info
x = torch.ones(50_000_000)            # 200 MB, a 128³ × 24-channel feature map
mapped = mallinfo().hblkhd
del x
print(json.dumps({"mapped_while_held": mapped, "heap_after_free": mallinfo().arena}))
"""


def _probe(mode: str, **env) -> dict:
    if not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"):
        pytest.skip("C library without mallinfo2 (glibc < 2.33 or not glibc)")
    environ = {k: v for k, v in os.environ.items() if k not in USER_MALLOC_VARS}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**environ, **env}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_processes_serve_large_tensors_from_the_heap_and_keep_them():
    got = _probe("cli")
    assert got["mapped_while_held"] < 100e6
    assert got["heap_after_free"] >= 200e6   # kept for the next window, already faulted in


def test_a_library_import_leaves_the_allocator_alone():
    got = _probe("library")
    assert got["mapped_while_held"] >= 200e6
    assert got["heap_after_free"] < 100e6


def test_the_users_own_malloc_setting_wins():
    got = _probe("cli", MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    assert got["mapped_while_held"] >= 200e6
