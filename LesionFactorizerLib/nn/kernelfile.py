"""The window-NMF kernel's manifest: what a build records beside the library it compiled, and the
check ``nn/native.py`` makes before loading one (stdlib only: the wheel build imports it).

A manifest is a JSON object with ``library`` (the file name, in the manifest's folder), ``bytes``,
``sha256`` (of the library), ``source_sha256`` (of the ``window_nmf.c`` it was built from) and
``compiler``. Its writers: :func:`manifest` (``setup.py`` and the developer cache) and
``LesionFactorizer/WriteKernelManifest.cmake`` (the extension), which writes the same keys.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from LesionFactorizerLib.usercache import not_own

SOURCE = Path(__file__).with_name("window_nmf.c")
PREBUILT = Path(__file__).with_name("window_nmf.json")   # the prebuilt library's manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(library: Path, compiler: str) -> dict:
    """The record of ``library``, just built from :data:`SOURCE` by ``compiler``."""
    return {"library": library.name, "bytes": library.stat().st_size, "sha256": sha256(library),
            "source_sha256": sha256(SOURCE), "compiler": compiler}


def verified(record_path: Path, source_sha256: str, *, own: bool) -> tuple[Path | None, dict, str]:
    """The library ``record_path`` describes if it is safe to map, its record, and why not.

    Its size and SHA-256 must be the recorded ones (a truncated library, once mapped, kills the
    process with SIGBUS when touched; a swapped one would run someone else's code) and its source
    the installed one (a stale build). ``own``: the manifest and the library must also be the
    user's own (:func:`usercache.not_own`), for the cache, where no install put them."""
    if own and (why := not_own(record_path)):
        return None, {}, why
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        name, size, digest = record["library"], int(record["bytes"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, {}, f"its manifest {record_path} is missing or unreadable ({exc})"
    if not isinstance(name, str) or Path(name).name != name:
        return None, {}, f"its manifest {record_path} names a file outside its folder"
    if record.get("source_sha256") != source_sha256:
        return None, {}, f"it was built from another {SOURCE.name} than the one installed"
    path = record_path.parent / name
    if own and (why := not_own(path)):
        return None, {}, why
    try:
        if path.stat().st_size != size:
            return None, {}, f"{path} is {path.stat().st_size} bytes, its manifest records {size}"
        if sha256(path) != digest:
            return None, {}, f"{path} does not match the SHA-256 its manifest records"
    except OSError as exc:
        return None, {}, f"{path} cannot be read ({exc.strerror})"
    return path, record, ""
