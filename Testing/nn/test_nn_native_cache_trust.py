"""The window-NMF kernel's developer cache (built once, clean fallbacks), and that the kernel never
runs code it cannot vouch for, nor crashes on a damaged library.

Real files in a temporary cache (the developer path, LESION_FACTORIZER_NATIVE=build) and in a
copy of the installed package (the prebuilt path): a library someone else could have planted (a
cache folder or file writable by group or others), a library whose bytes are not the recorded
ones, a truncated one. The planted library is a real shared library whose constructor writes a
marker file the moment it is mapped; each case must end with exit 0, one warning line, and no
marker. (A folder owned by another user cannot be made without a second account; the owner rule
sits in the same check, usercache.not_own.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from LesionFactorizerLib.nn import native
from LesionFactorizerLib.nn.kernelfile import manifest, sha256

pytestmark = [pytest.mark.skipif(os.name == "nt" or native._compiler() is None,
                                 reason="needs a C compiler to plant a library, and POSIX permissions"),
              pytest.mark.slow]

PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("planted code ran\n", f); fclose(f); }
}
int lf_window_nmf_rank1(void) { return 0; }
"""


@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path]:
    """A shared library that writes a marker file when loaded, and that marker's path."""
    marker = tmp_path / "planted-code-ran"
    source = tmp_path / "planted.c"
    source.write_text(PLANTED)
    library = tmp_path / f"planted{native.SUFFIX}"
    subprocess.run([native._compiler(), "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(library),
                    str(source)], check=True, capture_output=True)
    return library, marker


def _package_copy(site: Path) -> Path:
    """The installed package copied under ``site`` without a compiled kernel (an editable install
    leaves one beside the sources): the nn folder."""
    shutil.copytree(Path(native.__file__).parents[1], site / "LesionFactorizerLib",
                    ignore=shutil.ignore_patterns("__pycache__", "window_nmf.[!c]*"))
    return site / "LesionFactorizerLib" / "nn"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A package without a prebuilt kernel, so the developer cache is what loads."""
    site = tmp_path_factory.mktemp("site")
    _package_copy(site)
    return site


def _load(cache: Path, site: Path, **env) -> tuple[int, list[str]]:
    """Exit status and [status, warning, loaded path, stderr] of a fresh process that loads the
    kernel from the package in ``site``."""
    code = ("from LesionFactorizerLib.nn import native; native.library(); "
            "print(native.status()); print(native.warning()); print(native._state.get('path', '-'))")
    env = {**os.environ, "LESION_FACTORIZER_CACHE": str(cache), "LESION_FACTORIZER_NATIVE": "build",
           "PYTHONPATH": str(site), **env}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=site)   # not the repository: -c puts the working folder first on sys.path
    lines = run.stdout.strip().splitlines()[:3]
    return run.returncode, lines + [""] * (3 - len(lines)) + [run.stderr[-2000:]]   # a crash prints nothing


@pytest.fixture
def cached(tmp_path, site) -> tuple[Path, Path]:
    """A cache with a kernel legitimately built by the developer path: (cache, library)."""
    cache = tmp_path / "cache"
    code, (status, warning, path, _) = _load(cache, site)
    assert code == 0 and status.startswith("native (built here") and warning == "None", status
    return cache, Path(path)


def test_built_once_into_the_cache_and_failures_fall_back(tmp_path, site):
    cache = tmp_path / "cache"
    status, _, path = _load(cache, site)[1][:3]
    assert status.startswith("native (built here")
    built = sorted((cache / "native").iterdir())
    assert [p.suffix for p in built] == [".json", Path(path).suffix] and str(built[1]) == path
    stamp = built[1].stat().st_mtime_ns
    assert _load(cache, site)[1][:3] == [status, "None", path]    # a later process loads it, no rebuild
    assert built[1].stat().st_mtime_ns == stamp

    status = _load(cache, site, CC="false")[1][0]                # a compiler that fails
    assert status.startswith("pytorch (building it with") and "false" in status
    assert sorted((cache / "native").iterdir()) == built         # nothing half-written left behind
    assert _load(cache, site, LESION_FACTORIZER_NATIVE="0")[1][0] == "pytorch (turned off by LESION_FACTORIZER_NATIVE=0)"
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    assert _load(blocked, site)[1][0].startswith("pytorch (building it failed")   # an unusable cache folder


@pytest.mark.parametrize("writable", ["group", "others"])
@pytest.mark.parametrize("where", ["cache folder", "folder above it"])
def test_a_cache_others_can_write_is_refused(cached, site, planted, writable, where):
    cache, library = cached
    shutil.copyfile(planted[0], library)   # what another account could have put there
    folder = library.parent if where == "cache folder" else cache
    folder.chmod(folder.stat().st_mode | (0o020 if writable == "group" else 0o002))
    code, (status, warning, path, stderr) = _load(cache, site)
    assert code == 0, stderr
    assert not planted[1].exists(), "the planted library ran"
    assert status.startswith("pytorch (the kernel cache is not safe to load code from") and path == "-"
    assert f"{folder} is writable by other users" in warning and "PyTorch path runs" in warning
    folder.chmod(folder.stat().st_mode & ~0o022)    # the user's own again: rebuilt over the planted file
    code, (status, warning, path, _) = _load(cache, site)
    assert status.startswith("native (built here") and not planted[1].exists()


@pytest.mark.parametrize("damage", ["planted, other bytes", "planted, writable by others", "truncated",
                                    "manifest missing"])
def test_a_damaged_cached_library_is_never_loaded_and_is_rebuilt(cached, site, planted, damage):
    cache, library = cached
    manifest = library.with_suffix(".json")
    if damage.startswith("planted"):
        size = library.stat().st_size   # padded to the recorded size: only the hash can tell
        library.write_bytes(planted[0].read_bytes().ljust(size, b"\0"))
        if damage.endswith("by others"):
            library.chmod(0o777)
    elif damage == "truncated":
        library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])   # mapped, it would SIGBUS
    else:
        manifest.unlink()
    expected = {"planted, other bytes": "does not match the SHA-256", "planted, writable by others":
                "is writable by other users", "truncated": "bytes, its manifest records",
                "manifest missing": "No such file"}[damage]

    code, (status, warning, path, stderr) = _load(cache, site)
    assert code == 0, stderr
    assert not planted[1].exists(), "the planted library ran"
    assert status.startswith("native (built here") and path == str(library)
    assert warning.startswith("rebuilt the cached window-NMF kernel") and expected in warning, warning
    assert json.loads(manifest.read_text())["sha256"] == sha256(library)
    assert _load(cache, site)[1][:2] == [status, "None"]      # the rebuilt one is trusted from now on


def test_a_damaged_prebuilt_library_is_skipped(tmp_path, planted):
    """The prebuilt path, in a copy of the installed package with a library and manifest beside
    nn/native.py as the builds leave them: used when intact; planted or truncated, skipped with a
    warning (and nothing compiled unless the developer opts in)."""
    nn = _package_copy(tmp_path / "site")
    library = nn / f"window_nmf{native.SUFFIX}"
    subprocess.run([native._compiler(), "-O3", "-std=c99", "-shared", "-fPIC", "-o", str(library),
                    str(nn / "window_nmf.c")], check=True, capture_output=True)
    (nn / "window_nmf.json").write_text(json.dumps(manifest(library, "cc, test")))
    site = tmp_path / "site"

    code, (status, warning, path, _) = _load(tmp_path / "cache", site, LESION_FACTORIZER_NATIVE="1")
    assert (code, status, warning, path) == (0, "native (prebuilt, cc, test)", "None", str(library))
    original = library.read_bytes()
    for damage, expected in (("planted", "does not match the SHA-256"), ("truncated", "bytes, its manifest records")):
        library.write_bytes(planted[0].read_bytes().ljust(len(original), b"\0") if damage == "planted"
                            else original[: len(original) // 2])
        code, (status, warning, path, stderr) = _load(tmp_path / "cache", site, LESION_FACTORIZER_NATIVE="1")
        assert code == 0, stderr
        assert not planted[1].exists(), "the planted library ran"
        assert status.startswith("pytorch (the installed kernel is not used") and expected in warning, warning
    assert not (tmp_path / "cache").exists()    # nothing compiled without the developer opt-in
