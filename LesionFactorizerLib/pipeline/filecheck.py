"""Byte-level checks of an input file before its pixels are trusted, and input checksums.

SimpleITK is lenient where a clinical tool must not be: a truncated ``.nii``/``.nii.gz`` is
zero-filled, a gzip stream with a CRC error is decoded anyway, NaN/inf voxels of a NIfTI file
become 0 before they can be seen, and a zero voxel size is read as 1 mm. So the raw file is read
once here: the gzip stream is decoded with its CRC and length checked, the NIfTI header is
parsed, the data it announces must be present, float voxels must be finite and voxel sizes
positive. The same pass yields the file's SHA-256, which report.json records so that a resumed
batch can tell whether a finished case's inputs are still the same files.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from LesionFactorizerLib.core.errors import UserError

# NIfTI datatype code → (numpy kind, bytes per voxel); complex and RGB types are refused elsewhere.
_NIFTI_TYPES = {2: ("u1", 1), 4: ("i2", 2), 8: ("i4", 4), 16: ("f4", 4), 32: ("c8", 8), 64: ("f8", 8),
                128: ("rgb", 3), 256: ("i1", 1), 512: ("u2", 2), 768: ("u4", 4), 1024: ("i8", 8), 1280: ("u8", 8),
                1536: ("f16", 16), 1792: ("c16", 16), 2048: ("c32", 32), 2304: ("rgba", 4)}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's regular files (names and contents, sorted by name)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f.name.encode("utf-8") + b"\0")
        with open(f, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_bytes_checked(path: Path, name: str) -> tuple[bytes, str]:
    """The file's decoded bytes (gunzipped when gzip) and the SHA-256 of the file as stored."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"input {name}: cannot read {path} ({exc.strerror}); check the file and its "
                        "permissions") from None
    sha = hashlib.sha256(raw).hexdigest()
    if raw[:2] != b"\x1f\x8b":
        return raw, sha
    try:
        data = gzip.decompress(raw)
    except EOFError:
        raise UserError(f"input {name}: {path} is truncated (the gzip stream ends early); copy or export the "
                        "file again") from None
    except (OSError, zlib.error) as exc:   # BadGzipFile (CRC or length mismatch) is an OSError
        raise UserError(f"input {name}: {path} is damaged (gzip: {exc}); copy or export the file again") from None
    return data, sha


def check_nifti(data: bytes, path: Path, name: str) -> None:
    """Refuse a NIfTI-1/2 file whose header lies about its data, whose float voxels are not finite,
    or whose voxel size is zero, negative or not a number."""
    header = _nifti_header(data)
    if header is None:
        return   # not a single-file NIfTI (e.g. .hdr/.img pair); ITK's own checks apply
    dims, code, vox_offset, pixdim, slope, inter = header
    bad = f"input {name}: {path}"
    if code not in _NIFTI_TYPES:
        raise UserError(f"{bad} has an unknown NIfTI data type code {code}; re-export the image")
    kind, size = _NIFTI_TYPES[code]
    if kind.startswith("c"):
        raise UserError(f"{bad} holds complex values; give a real-valued (magnitude) MRI volume")
    count = math.prod(dims) if dims else 0   # Python ints: 2^31 x 2^31 x 4 must not wrap to 0
    needed = vox_offset + count * size
    if count <= 0 or len(data) < needed:
        raise UserError(f"{bad} is truncated or its header is wrong: the header announces "
                        f"{'x'.join(map(str, dims))} voxels ({needed} bytes) but the file holds {len(data)} bytes; "
                        "copy or export the file again")
    spatial = pixdim[: min(3, len(dims))]
    if any(not np.isfinite(s) or s <= 0 for s in spatial):
        raise UserError(f"{bad} has voxel size {list(map(float, spatial))} mm in its header; a voxel size must be "
                        "positive: fix the header (pixdim) or re-export the image")
    if slope != 0 and not (np.isfinite(slope) and np.isfinite(inter)):
        raise UserError(f"{bad} has a non-finite intensity scaling (scl_slope {slope}, scl_inter {inter}); "
                        "fix or re-export the image")
    if kind in ("f4", "f8"):
        order = header_order(data)
        values = np.frombuffer(data, dtype=np.dtype(order + kind), count=count, offset=vox_offset)
        bad_count = count - int(np.count_nonzero(np.isfinite(values)))
        if bad_count:
            raise UserError(f"{bad} contains {bad_count} NaN or infinite voxel values; fix or re-export the image")


def nifti_size(path: Path) -> tuple[list[int], list[float], int] | None:
    """(dims, voxel sizes, bytes per voxel) from a single-file NIfTI's header alone (the first bytes
    of the gzip stream when compressed), or None when the file is no such NIfTI: the size is known
    before the voxels are decompressed or allocated."""
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
            data = stream.read(544)
    except (OSError, EOFError, zlib.error):
        return None   # read_bytes_checked says what is wrong with the file
    header = _nifti_header(data)
    if header is None or not header[0] or header[1] not in _NIFTI_TYPES:
        return None
    return header[0], header[3], _NIFTI_TYPES[header[1]][1]


def header_order(data: bytes) -> str:
    """'<' or '>': the byte order in which sizeof_hdr reads 348 (NIfTI-1) or 540 (NIfTI-2)."""
    return "<" if struct.unpack("<i", data[:4])[0] in (348, 540) else ">"


def _nifti_header(data: bytes):
    """(dims, datatype, vox_offset, pixdim[1:], scl_slope, scl_inter) of a single-file NIfTI, else None."""
    if len(data) < 348:
        return None
    order = header_order(data)
    (sizeof_hdr,) = struct.unpack(order + "i", data[:4])
    if sizeof_hdr == 348 and data[344:348] == b"n+1\0":
        dim = struct.unpack(order + "8h", data[40:56])
        code, = struct.unpack(order + "h", data[70:72])
        pixdim = struct.unpack(order + "8f", data[76:108])
        vox_offset, slope, inter = struct.unpack(order + "3f", data[108:120])
    elif sizeof_hdr == 540 and len(data) >= 540 and data[4:8] == b"n+2\0":
        code, = struct.unpack(order + "h", data[12:14])
        dim = struct.unpack(order + "8q", data[16:80])
        pixdim = struct.unpack(order + "8d", data[104:168])
        vox_offset, = struct.unpack(order + "q", data[168:176])
        slope, inter = struct.unpack(order + "2d", data[176:192])
    else:
        return None
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        return [], code, 0, [], 0.0, 0.0
    dims = [int(d) for d in dim[1:1 + ndim]]
    if any(d <= 0 for d in dims):
        dims = [0]
    return dims, int(code), int(vox_offset), list(pixdim[1:1 + ndim]), float(slope), float(inter)
