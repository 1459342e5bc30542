"""Where the Lib keeps what it builds for this machine: compiled kernels, exported models, backend
measurements (torch-free), and whether a folder there is the user's own."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path


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
