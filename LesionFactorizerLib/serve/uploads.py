"""What an uploaded image may be, decided from its first bytes before the rest is stored.

The format comes from the content (gzip / NIfTI-1 / NIfTI-2 / NRRD magic), never from a file
name, and the voxel count from the header, so an oversized volume is refused before its body is
read. NRRD headers that point at other files (``data file:``) are refused: on a server they would
name the server's own files. Everything else about the image is checked afterwards by the same
code as the command line's inputs (``pipeline/io.read_image``).

Pure Python, torch-free.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from LesionFactorizerLib.core.errors import UserError

NRRD_HEADER_MAX = 64 * 1024   # a text header longer than this is not a volume we want


@dataclass(frozen=True)
class Header:
    suffix: str     # the stored file's suffix: .nii, .nii.gz or .nrrd
    voxels: int
    shape: tuple


def _nifti(head: bytes, gz: bool) -> Header | None:
    """None while ``head`` is too short to tell."""
    if len(head) < 4:
        return None
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            if len(head) < 348:
                return None
            if head[344:348] not in (b"n+1\0", b"ni1\0"):
                break
            if head[344:348] == b"ni1\0":
                raise UserError("the upload is a NIfTI header without its image (.hdr/.img pair); "
                                "send a single-file NIfTI (.nii or .nii.gz) or NRRD")
            dims = struct.unpack(endian + "8h", head[40:56])
        elif size == 540:
            if len(head) < 540:
                return None
            if head[4:8] not in (b"n+2\0",):
                break
            dims = struct.unpack(endian + "8q", head[16:80])
        else:
            continue
        ndim = dims[0]
        if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
            raise UserError(f"the upload's NIfTI header gives an impossible size {dims[1:ndim + 1]}; "
                            "export the volume again")
        shape = tuple(int(d) for d in dims[1:ndim + 1])
        return Header(".nii.gz" if gz else ".nii", _product(shape), shape)
    raise _unknown()


def _nrrd(head: bytes) -> Header | None:
    end = head.find(b"\n\n")
    if end < 0:
        end = head.find(b"\r\n\r\n")
    if end < 0:
        if len(head) > NRRD_HEADER_MAX:
            raise UserError("the upload's NRRD header has no end within 64 KiB; export the volume again")
        return None
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if "data file" in fields or "datafile" in fields:
        raise UserError("the upload is an NRRD header whose voxels are in another file (detached header); "
                        "send one attached .nrrd file")
    try:
        shape = tuple(int(s) for s in fields["sizes"].split())
    except (KeyError, ValueError):
        raise UserError("the upload's NRRD header has no valid 'sizes' field; export the volume again") from None
    if not shape or any(s < 1 for s in shape):
        raise UserError(f"the upload's NRRD header gives an impossible size {shape}; export the volume again")
    return Header(".nrrd", _product(shape), shape)


def _product(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _unknown() -> UserError:
    return UserError("the upload is neither NIfTI (.nii, .nii.gz) nor NRRD (judged from its content); "
                     "send the volume as NIfTI or NRRD")


class HeaderReader:
    """Fed the upload's first chunks; :attr:`header` is set as soon as the format and size are known."""

    def __init__(self, max_voxels: int):
        self.max_voxels = max_voxels
        self.header: Header | None = None
        self._raw = b""
        self._gunzip = None
        self._plain = b""

    def feed(self, chunk: bytes) -> Header | None:
        if self.header is not None:
            return self.header
        self._raw += chunk
        if self._gunzip is None and len(self._raw) >= 2 and self._raw[:2] == b"\x1f\x8b":
            self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk, self._raw = self._raw, b""
        if self._gunzip is not None:
            try:
                self._plain += self._gunzip.decompress(chunk, 4096)
            except zlib.error:
                raise UserError("the upload is a damaged gzip stream; export the volume again") from None
            head, gz = self._plain, True
        else:
            head, gz = self._raw, False
        if head[:4] == b"NRRD":
            if gz:
                raise _unknown()
            self.header = _nrrd(head)
        elif len(head) >= 4 and head[:1] != b"N":
            self.header = _nifti(head, gz)
        elif len(head) >= 4:
            raise _unknown()
        if self.header is not None and self.header.voxels > self.max_voxels:
            raise TooLarge(f"the volume has {self.header.voxels:,} voxels "
                           f"({'x'.join(map(str, self.header.shape))}); this server takes at most "
                           f"{self.max_voxels:,}: crop or resample it first")
        return self.header

    def finish(self) -> Header:
        if self.header is None:
            raise UserError("the upload ends before its image header does; export the volume again")
        return self.header


class TooLarge(UserError):
    """Over a size cap: HTTP 413."""
