"""SHA-256 of files and byte buffers, read in 1 MiB chunks (pure Python; the Slicer GUI uses it too)."""

from __future__ import annotations

import hashlib
import os
from typing import Iterator, Tuple, Union

Source = Union[str, os.PathLike, bytes, memoryview]
_CHUNK = 1 << 20


def _chunks(source: Source) -> Iterator[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        for start in range(0, len(view), _CHUNK):
            yield view[start:start + _CHUNK]
        return
    with open(source, "rb") as f:
        yield from iter(lambda: f.read(_CHUNK), b"")


def sha256(source: Source) -> str:
    """Hex SHA-256 of a file (path) or of bytes."""
    return sha256_split(source, 0)[0]


def sha256_split(source: Source, offset: int) -> Tuple[str, str]:
    """(SHA-256 of everything, SHA-256 of what follows byte ``offset``) in one read."""
    whole, tail = hashlib.sha256(), hashlib.sha256()
    done = 0
    for chunk in _chunks(source):
        whole.update(chunk)
        if done + len(chunk) > offset:
            tail.update(chunk[max(0, offset - done):])
        done += len(chunk)
    return whole.hexdigest(), tail.hexdigest()
