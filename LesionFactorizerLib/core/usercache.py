"""Where the Lib keeps what it builds for this machine: compiled kernels, exported models, backend
measurements (torch-free), whether a folder there is the user's own, and the records that let a
cached file be checked before it is loaded."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path

from LesionFactorizerLib.core.checksums import sha256


def cache_dir() -> Path:
    """The user cache folder for compiled code, exported models and backend measurements:
    ``$LESION_FACTORIZER_CACHE``, else the platform's user cache (``%LOCALAPPDATA%`` on Windows,
    ``~/Library/Caches`` on macOS, ``$XDG_CACHE_HOME`` or ``~/.cache`` elsewhere) + ``lesion-factorizer``."""
    if os.environ.get("LESION_FACTORIZER_CACHE"):
        return Path(os.environ["LESION_FACTORIZER_CACHE"])
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lesion-factorizer"


def not_own(path: Path) -> str:
    """Why another account could have put or changed ``path`` (a file or folder to load code from),
    or "" when it is the user's own: it belongs to the current user, every folder above it to the
    user or root, and none of them is writable by group or others. A folder above that others may
    write but with the sticky bit (``/tmp``) passes: they cannot rename or delete what is ours in it.
    Links are resolved first, so the rule holds for what is really read. Not checked on Windows,
    where the user cache (``%LOCALAPPDATA%``) is private by its access lists."""
    if os.name == "nt":
        return ""
    uid = os.getuid()
    real = Path(os.path.realpath(path))
    for depth, item in enumerate([real, *real.parents]):
        try:
            info = os.stat(item)
        except OSError as exc:
            return f"{item} cannot be checked ({exc.strerror})"
        if info.st_uid != uid and (depth == 0 or info.st_uid != 0):
            return f"{item} belongs to another user"
        if info.st_mode & 0o022 and not (depth > 0 and info.st_mode & stat.S_ISVTX):
            return f"{item} is writable by other users (chmod go-w {item})"
    return ""


def make_own_folder(folder: Path) -> None:
    """Creates ``folder`` and any missing folder above it readable and writable by the user alone
    (a umask of 002 would otherwise make them group-writable, which :func:`not_own` refuses)."""
    missing = []
    for item in [folder, *folder.parents]:
        if item.exists():
            break
        missing.append(item)
    for item in reversed(missing):
        try:
            os.mkdir(item, 0o700)
        except FileExistsError:   # made by a concurrent run meanwhile: not_own judges it
            pass


def write_record(path: Path, record: dict) -> None:
    """Writes the JSON ``record`` to ``path`` through a temporary file in its folder, then renames
    it: a concurrent reader sees the old record or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_record(path: Path) -> dict:
    """The JSON object in ``path``, read strictly (a JSON object, no NaN or Infinity, no key twice),
    or ValueError/OSError saying why not."""
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    def unique(pairs):
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("a key appears twice")
        return dict(pairs)

    record = json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants, object_pairs_hook=unique)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def file_record(path: Path, **facts) -> dict:
    """The record :func:`verified_file` checks ``path`` against (its name, size and SHA-256) plus ``facts``."""
    return {"library": path.name, "bytes": path.stat().st_size, "sha256": sha256(path), **facts}


def verified_file(record_path: Path, *, own: bool) -> tuple[Path | None, dict, str]:
    """The file the record ``record_path`` describes (:func:`file_record`) if it is safe to load, the
    record, and why not: its size and SHA-256 must be the recorded ones (a damaged, truncated or
    swapped file is never loaded) and, with ``own`` (the cache, where no install put them), the
    record and the file must be the user's own (:func:`not_own`)."""
    if own and (why := not_own(record_path)):
        return None, {}, why
    try:
        record = read_record(record_path)
        name, size, digest = record["library"], int(record["bytes"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, {}, f"its manifest {record_path} is missing or unreadable ({exc})"
    if not isinstance(name, str) or Path(name).name != name:
        return None, {}, f"its manifest {record_path} names a file outside its folder"
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
