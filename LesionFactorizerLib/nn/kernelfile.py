"""The window-NMF kernel's manifest: what a build records beside the library it compiled, and the
check ``nn/native.py`` makes before loading one (stdlib only: the wheel build imports it).

A manifest is a JSON object with ``library`` (the file name, in the manifest's folder), ``bytes``,
``sha256`` (of the library), ``source_sha256`` (of the ``window_nmf.c`` it was built from) and
``compiler``. Its writers: :func:`manifest` (``setup.py`` and the developer cache) and
``LesionFactorizer/WriteKernelManifest.cmake`` (the extension), which writes the same keys.
"""

from __future__ import annotations

from pathlib import Path

from LesionFactorizerLib.core.checksums import sha256
from LesionFactorizerLib.core.usercache import file_record, verified_file

SOURCE = Path(__file__).with_name("window_nmf.c")
PREBUILT = Path(__file__).with_name("window_nmf.json")   # the prebuilt library's manifest


def manifest(library: Path, compiler: str) -> dict:
    """The record of ``library``, just built from :data:`SOURCE` by ``compiler``."""
    return file_record(library, source_sha256=sha256(SOURCE), compiler=compiler)


def verified(record_path: Path, source_sha256: str, *, own: bool) -> tuple[Path | None, dict, str]:
    """The library ``record_path`` describes if it is safe to map, its record, and why not.

    Its size and SHA-256 must be the recorded ones (a truncated library, once mapped, kills the
    process with SIGBUS when touched; a swapped one would run someone else's code) and its source
    the installed one (a stale build). ``own``: the manifest and the library must also be the
    user's own (:func:`usercache.not_own`), for the cache, where no install put them."""
    path, record, why = verified_file(record_path, own=own)
    if path is not None and record.get("source_sha256") != source_sha256:
        return None, {}, f"it was built from another {SOURCE.name} than the one installed"
    return path, record, why
