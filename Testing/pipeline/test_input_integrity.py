"""Damaged or implausible input files are refused with one line, never read as something else
(issue 13 items 1, 2, 7, 8, 9, 10, 12, 16): each test damages a small real file the way a disk,
a copy or an exporter does."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import cli, grid, main_in_process, sample, save_threshold_model, write_case, write_dicom_series

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.pipeline.io import read_image
from LesionFactorizerLib.pipeline.segment import segment_case
from LesionFactorizerLib.core.settings import SegmentSettings


def phantom(size=(20, 22, 12), spacing=(1.6, 1.6, 2.5)) -> sitk.Image:
    return sample(grid(size, spacing))


def write(path: Path, image: sitk.Image, compress=False) -> Path:
    sitk.WriteImage(image, str(path), compress)
    return path


def refused(path, *words):
    with pytest.raises(UserError) as info:
        read_image(path, "dwi")
    for word in words:
        assert word in str(info.value), str(info.value)
    return str(info.value)


def nifti_patch(path: Path, offset: int, fmt: str, *values) -> None:
    """Overwrite NIfTI-1 header fields of an uncompressed .nii file in place."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, offset, *values)
    path.write_bytes(bytes(data))


# -- 1. damaged files ------------------------------------------------------------------------------
def test_gzip_nifti_cut_in_half_is_refused(tmp_path):
    path = write(tmp_path / "dwi.nii.gz", phantom(), compress=True)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    refused(path, "truncated")


def test_plain_nifti_cut_in_half_is_refused(tmp_path):
    path = write(tmp_path / "dwi.nii", phantom())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    refused(path, "truncated", "bytes")


def test_nifti_header_claiming_four_times_the_slices_is_refused(tmp_path):
    path = write(tmp_path / "dwi.nii", phantom())
    nifti_patch(path, 40 + 3 * 2, "h", 12 * 4)      # dim[3]: 12 slices → 48
    refused(path, "header", "20x22x48")


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
def test_truncated_mha_and_nrrd_are_refused_with_a_true_reason(tmp_path, ext):
    path = write(tmp_path / f"dwi{ext}", phantom())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    assert "No such file" not in refused(path, "cannot read", "damaged or truncated")


def test_gzip_stream_with_a_crc_error_is_refused(tmp_path):
    path = write(tmp_path / "dwi.nii.gz", phantom(), compress=True)
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF                                   # the stored CRC-32 no longer matches the data
    path.write_bytes(bytes(raw))
    refused(path, "damaged", "gzip")


# -- 2. NaN / inf in NIfTI --------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nan_and_inf_voxels_in_nifti_are_refused(tmp_path, ext):
    array = sitk.GetArrayFromImage(phantom())
    array[3, 4, 5], array[6, 7, 8] = np.nan, np.inf
    path = write(tmp_path / f"dwi{ext}", sitk.GetImageFromArray(array), compress=ext.endswith("gz"))
    refused(path, "2 NaN or infinite")


# -- 7. sheared direction -------------------------------------------------------------------------
def test_sheared_direction_matrix_is_refused(tmp_path):
    image = phantom()
    image.SetDirection((1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    refused(write(tmp_path / "dwi.mha", image), "sheared")


# -- 8. DICOM series with a missing slice ----------------------------------------------------------
def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    write_dicom_series(phantom(), tmp_path / "dwi")
    files = sorted((tmp_path / "dwi").iterdir())
    read_image(tmp_path / "dwi", "dwi")               # complete: fine
    files[len(files) // 2].unlink()
    refused(tmp_path / "dwi", "unevenly spaced", "missing")


# -- 10. implausible spacing -----------------------------------------------------------------------
def test_zero_voxel_size_in_a_nifti_header_is_refused(tmp_path):
    path = write(tmp_path / "dwi.nii", phantom())
    nifti_patch(path, 76 + 4 * 3, "f", 0.0)           # pixdim[3] = 0 (ITK would read 1 mm)
    refused(path, "voxel size", "positive")


@pytest.mark.parametrize("spacing", [1e-6, 1e6])
def test_implausible_voxel_sizes_are_refused(tmp_path, spacing):
    image = phantom()
    image.SetSpacing((spacing,) * 3)
    refused(write(tmp_path / "dwi.nrrd", image), "voxel size", "plausible")


# -- 12. complex pixels ----------------------------------------------------------------------------
def test_complex_pixel_type_is_refused(tmp_path):
    array = sitk.GetArrayFromImage(phantom()).astype(np.complex64)
    refused(write(tmp_path / "dwi.nrrd", sitk.GetImageFromArray(array)), "complex")
    refused(write(tmp_path / "dwi.nii", sitk.GetImageFromArray(array)), "complex")


# -- 16. clear reasons ----------------------------------------------------------------------------
def test_symlink_loop_is_called_a_loop_not_missing(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.symlink_to(b)
    b.symlink_to(a)
    refused(a, "symbolic link loop")


def test_uint64_values_beyond_float32_precision_are_not_called_constant(tmp_path):
    array = (np.uint64(2**60) + np.arange(20 * 22 * 12, dtype=np.uint64)).reshape(12, 22, 20)
    message = refused(write(tmp_path / "dwi.nrrd", sitk.GetImageFromArray(array)), "float32 precision")
    assert "constant" not in message


def test_reader_noise_does_not_reach_stderr_before_the_error_line(tmp_path):
    model = save_threshold_model(tmp_path / "thr.safetensors")
    paths = write_case(tmp_path / "in")
    bad = tmp_path / "in" / "dwi.nii"
    bad.write_bytes(struct.pack("<i", 348) + bytes(400))     # an Analyze-style header niftilib complains about
    proc = main_in_process("segment", "--task", "stroke", "--model", model, "-o", tmp_path / "out", "-i", f"dwi={bad}",
                           "-i", f"adc={paths['adc']}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: input dwi"), proc.stderr
    assert "not recognized as a NIFTI file" in lines[0]           # ITK's reason, not its source location
    assert ".cxx" not in lines[0] and "Exception thrown" not in lines[0] and "0x" not in lines[0], lines[0]


# -- 9. one file for two inputs --------------------------------------------------------------------
@pytest.mark.slow
def test_same_file_for_two_inputs_is_refused(tmp_path):
    paths = write_case(tmp_path / "in")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    settings = SegmentSettings(task="stroke", models=[model], overview=False)
    with pytest.raises(UserError, match="same file"):
        segment_case({"dwi": paths["dwi"], "adc": paths["dwi"]}, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()


# -- 12. memory before allocation ------------------------------------------------------------------
@pytest.mark.slow
def test_model_spacing_that_needs_more_memory_than_the_machine_is_refused(tmp_path):
    paths = write_case(tmp_path / "in")
    model = save_threshold_model(tmp_path / "thr.safetensors", spacing=(0.001, 0.001, 0.001))
    with pytest.raises(UserError, match="GiB of memory"):
        segment_case(paths, tmp_path / "out", SegmentSettings(task="stroke", models=[model], overview=False))
    assert not (tmp_path / "out").exists()


# -- issue 27: sizes from the header, before any voxel is read -------------------------------------
def nifti2_header(dims, code=16, spacing=(1.0, 1.0, 1.0)) -> bytes:
    """A NIfTI-2 header (540 bytes + 4 extension bytes) announcing ``dims`` voxels of type ``code``."""
    h = bytearray(544)
    struct.pack_into("<i4s8s", h, 0, 540, b"n+2\0", b"\r\n\x1a\n")
    struct.pack_into("<hh", h, 12, code, 32)
    struct.pack_into("<8q", h, 16, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<8d", h, 104, 1.0, *spacing, *([1.0] * (7 - len(spacing))))
    struct.pack_into("<q2d", h, 168, 544, 1.0, 0.0)
    return bytes(h)


def write_header_only(path: Path, dims) -> Path:
    if path.name.endswith(".mha"):
        path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, dims))}\n"
                        "ElementType = MET_FLOAT\nElementSpacing = 1 1 1\nElementDataFile = LOCAL\n")
    else:
        path.write_bytes(nifti2_header(dims))
    return path


@pytest.mark.parametrize("ext", [".nii", ".mha"])
def test_header_dimensions_that_overflow_are_refused_with_one_line(tmp_path, ext):
    """2^31 x 2^31 x 4 voxels: a traceback (MHA) or a message with a wrapped-around byte count (NIfTI)."""
    big = write_header_only(tmp_path / f"dwi{ext}", (2**31, 2**31, 4))
    refused(big, "2147483648x2147483648x4", "header", "address")
    paths = write_case(tmp_path / "in")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    run = main_in_process("segment", "--task", "stroke", "--model", model, "--input", f"dwi={big}", "--input",
                          f"adc={paths['adc']}", "-o", tmp_path / "out")
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("error:"), run.stderr
    assert not (tmp_path / "out").exists()


def gzip_of_zeros(path: Path, dims) -> Path:
    """A .nii.gz of ``dims`` uint8 voxels, zeros but the last (a real NIfTI-1 header, written by
    SimpleITK, resized): tiny on disk, ``prod(dims)`` bytes decoded."""
    import gzip

    small = path.with_name("small.nii")
    sitk.WriteImage(sitk.Image([2, 2, 2], sitk.sitkUInt8), str(small))
    header = bytearray(small.read_bytes()[:352])
    small.unlink()
    struct.pack_into("<4h", header, 40, 3, *dims)
    chunk = 1 << 24
    full, rest = divmod(int(np.prod(dims)) - 1, chunk)
    zeros = gzip.compress(bytes(chunk), 1)   # gzip members concatenate: one compressed chunk, repeated
    with open(path, "wb") as out:
        out.write(gzip.compress(bytes(header)) + zeros * full + gzip.compress(bytes(rest) + b"\x01"))
    return path


@pytest.mark.slow
def test_image_beyond_the_process_address_space_limit_is_refused_before_reading(tmp_path):
    """Under ``ulimit -v`` (RLIMIT_AS) an image small on disk but huge in its header is refused
    from its header with one line naming the limit, not by a failed allocation (on disk 4 MB, read
    0.75 GiB, cast to float32 3 GiB)."""
    import resource

    big = gzip_of_zeros(tmp_path / "dwi.nii.gz", (1024, 1024, 768))
    assert big.stat().st_size < 2**23
    paths = write_case(tmp_path / "in")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    limit = 2 << 30   # the case needs ~25 GiB: the physical-memory check alone passes it on a large machine
    run = cli("segment", "--task", "stroke", "--model", model, "--input", f"dwi={big}", "--input",
              f"adc={paths['adc']}", "-o", tmp_path / "out",
              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0, run.stderr
    assert "address-space limit (ulimit -v) of 2 GiB" in run.stderr and "1024x1024x768" in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()


def test_cgroup_memory_limits_are_read_from_this_process_hierarchies(tmp_path):
    """The v2 ``memory.max`` and v1 ``memory.limit_in_bytes`` of the process's own cgroup and its
    parents, in the layouts /proc/self/cgroup and /proc/self/mountinfo describe."""
    from LesionFactorizerLib.pipeline.guards import cgroup_memory_limit

    proc, sys_fs = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    v2 = sys_fs / "unified" / "job" / "step"
    v1 = sys_fs / "memory" / "slurm" / "uid_1"
    v2.mkdir(parents=True)
    v1.mkdir(parents=True)
    (sys_fs / "unified" / "job" / "memory.max").write_text(f"{3 << 30}\n")
    (v2 / "memory.max").write_text("max\n")
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")   # v1's "no limit"
    (proc / "self" / "mountinfo").write_text(
        f"41 31 0:38 / {sys_fs / 'unified'} rw,relatime - cgroup2 cgroup2 rw\n"
        f"35 31 0:32 / {sys_fs / 'memory'} rw,relatime - cgroup cgroup rw,memory\n")
    (proc / "self" / "cgroup").write_text("4:memory:/slurm/uid_1\n0::/job/step\n")
    assert cgroup_memory_limit(str(proc)) == 3 << 30            # the v2 parent's limit
    (v1 / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    assert cgroup_memory_limit(str(proc)) == 1 << 30            # v1's, tighter
    (proc / "self" / "cgroup").write_text("0::/\n")
    assert cgroup_memory_limit(str(proc)) is None               # the root: no limit
