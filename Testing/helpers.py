"""What several test modules share: the repository's paths, analytic phantoms sampled on any grid,
tiny model files, the command line (in-process and as a real process), DICOM series, the cropped
stroke sample, and the Slicer stand-in runner. Test modules import from here, never from each other.

An analytic phantom (a head-sized ellipsoid with mild texture and one bright spherical lesion at a
known physical point) can be sampled on any grid — oblique, anisotropic, RAS or LPS — so every
geometry claim is checked against physical ground truth, not against another grid.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LesionFactorizerLib.pipeline.geometry import Geometry

TESTING = Path(__file__).resolve().parent
REPO = TESTING.parent
MODULE_DIR = REPO / "LesionFactorizer"
STANDIN = TESTING / "slicer_standin"
HALF_MM = 36.0   # the cropped stroke sample: ±36 mm around its lesion

LESION_CENTER = np.array([4.0, -6.0, 3.0])   # mm, LPS
LESION_RADIUS = 5.0
HEAD_RADII = np.array([26.0, 30.0, 20.0])


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def phantom_values(points: np.ndarray, lesion: bool = True, seed: int = 0) -> np.ndarray:
    """Intensity at physical points (…, 3): 0 outside the head, ~100 ± texture inside, 400 in the lesion."""
    inside = (((points / HEAD_RADII) ** 2).sum(-1)) <= 1.0
    texture = 100.0 + 6.0 * np.sin(points[..., 0] / 3.1) * np.cos(points[..., 1] / 4.3) + 3.0 * np.sin(points[..., 2] / 2.2)
    values = np.where(inside, texture, 0.0)
    if lesion:
        in_lesion = np.linalg.norm(points - LESION_CENTER, axis=-1) <= LESION_RADIUS
        values = np.where(in_lesion & inside, 400.0, values)
    return values.astype(np.float32)


def sample(geometry: Geometry, lesion: bool = True) -> sitk.Image:
    """The phantom sampled at the voxel centres of ``geometry``."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in geometry.shape), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    points = geometry.index_to_physical(index)
    return geometry.to_image(phantom_values(points, lesion))


def grid(size, spacing, direction=np.eye(3), center=(0.0, 0.0, 0.0)) -> Geometry:
    """A grid of ``size`` voxels whose centre sits at physical ``center``."""
    d = np.asarray(direction, dtype=float)
    half = (np.asarray(size) - 1) / 2.0 * np.asarray(spacing)
    origin = np.asarray(center) - d @ half
    return Geometry(tuple(int(s) for s in size), tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                    tuple(float(v) for v in d.ravel()))


def save_threshold_model(path, task: str = "stroke", in_channels: int = 2, out_channels: int = 1, channel: int = 0,
                         threshold: float = 3.0, spacing=None, patch=(32, 32, 32), delay_s: float = 0.0,
                         inputs=None, **metadata) -> str:
    """A model file for the deterministic threshold network (labels voxels with z-score > threshold)."""
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file
    from LesionFactorizerLib.presets import build_architecture

    model = build_architecture("threshold-net", {"in_channels": in_channels, "out_channels": out_channels,
                                                 "channel": channel, "threshold": threshold, "delay_s": delay_s})
    meta = make_metadata(task, model.config, name="threshold", patch_size=patch, spacing=spacing, inputs=inputs,
                         description="diagnostic threshold network", **metadata)
    save_model_file(path, model, meta)
    return str(path)


def write_case(folder, names=("dwi", "adc"), size=(36, 40, 24), spacing=(1.6, 1.6, 2.5), ext=".nii.gz") -> dict:
    """One axis-aligned case with every input sampled from the phantom; returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    geom = grid(size, spacing)
    image = sample(geom)
    paths = {}
    for name in names:
        path = folder / f"{name}{ext}"
        sitk.WriteImage(image, str(path))
        paths[name] = str(path)
    return paths


def cli(*args, **kw) -> subprocess.CompletedProcess:
    """``lesion-factorizer ARGS`` as a real process: for tests about the process itself (signals,
    kills, what reaches its stdout, resource limits); otherwise :func:`main_in_process`."""
    return subprocess.run([sys.executable, "-m", "LesionFactorizerLib", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kw, encoding="utf-8")


def main_in_process(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``lesion-factorizer ARGS`` through ``main(argv)`` in this process, with :func:`cli`'s result:
    for checks of what the command decides (exit status, the error line, what is left on disk),
    where a separate process would prove nothing more. Output is captured at the file descriptors
    too, so a C library writing to stderr still breaks a one-line check; ``env`` replaces
    ``os.environ`` for the call; the SIGTERM handler the command installs is put back."""
    import signal
    import tempfile
    from unittest import mock

    from LesionFactorizerLib.cli import main

    texts, fd_texts = (io.StringIO(), io.StringIO()), []
    handler = signal.getsignal(signal.SIGTERM)
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out_fd, tempfile.TemporaryFile() as err_fd, \
            mock.patch.dict(os.environ, env if env is not None else {}, clear=env is not None):
        saved = os.dup(1), os.dup(2)
        os.dup2(out_fd.fileno(), 1)
        os.dup2(err_fd.fileno(), 2)
        try:
            with contextlib.redirect_stdout(texts[0]), contextlib.redirect_stderr(texts[1]):
                try:
                    code = main([str(a) for a in args])
                except SystemExit as exc:   # argparse: --help, --version, usage errors
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            signal.signal(signal.SIGTERM, handler)
        for f in (out_fd, err_fd):
            f.seek(0)
            fd_texts.append(f.read().decode("utf-8", "backslashreplace"))
    return subprocess.CompletedProcess(["lesion-factorizer", *map(str, args)], code,
                                       fd_texts[0] + texts[0].getvalue(), fd_texts[1] + texts[1].getvalue())


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` unwritable for this process, also for root (the immutable attribute)."""
    if os.geteuid() == 0:   # permissions do not stop root
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr support: cannot make a folder read-only")
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)])  # noqa: E731
    else:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    try:
        yield
    finally:
        undo()


def write_dicom_series(image: sitk.Image, folder, series_uid="1.2.826.0.1.3680043.2.1125.1", description="DWI",
                       tilt_deg: float = 0.0, omit=()):
    """One file per slice, its geometry tags from ``image``. ``tilt_deg``: gantry tilt, each slice's
    position shifted along the column direction by tan(tilt) x slice spacing (the orientation stays
    the scanner's); ``omit``: tags (``"0020|0032"``) left out of every file."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(sitk.RescaleIntensity(image, 0, 1000), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    column = np.array(direction[1::3])
    shear = np.tan(np.radians(tilt_deg)) * image.GetSpacing()[2]
    for z in range(image.GetDepth()):
        s = image[:, :, z]
        position = np.array(image.TransformIndexToPhysicalPoint((0, 0, z))) + z * shear * column
        tags = {"0020|000e": series_uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.2", "0008|0060": "MR",
                "0008|103e": description,
                "0020|0037": "\\".join(map(str, (direction[0], direction[3], direction[6],
                                                  direction[1], direction[4], direction[7]))),
                "0020|0032": "\\".join(f"{v:.6f}" for v in position),
                "0020|0013": str(z + 1), "0008|0018": f"{series_uid}.{z + 1}"}
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(s)
        if omit:   # GDCM's writer fills geometry tags in from the image: remove them afterwards
            import pydicom

            ds = pydicom.dcmread(folder / f"slice{z:03d}.dcm")
            for tag in omit:
                del ds[tuple(int(part, 16) for part in tag.split("|"))]
            ds.save_as(folder / f"slice{z:03d}.dcm")


def cropped_sample(task: str, folder: Path, half_mm: float) -> dict[str, str]:
    """The bundled sample's inputs of the task's demo model (and label.nii.gz) cropped to
    ±``half_mm`` around its lesion."""
    from LesionFactorizerLib.demo import bundled_demo_model
    from LesionFactorizerLib.modelfile import read_spec
    from LesionFactorizerLib.phantoms.samples import sample_case

    sample = sample_case(task)
    label = sitk.ReadImage(sample["label"])
    centre = np.round(np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(axis=0)).astype(int)[::-1]  # i, j, k
    half = np.ceil(half_mm / np.array(label.GetSpacing())).astype(int)
    lo = np.maximum(centre - half, 0)
    size = np.minimum(centre + half, np.array(label.GetSize())) - lo
    inputs = {}
    for name in read_spec(bundled_demo_model(task)).inputs:
        crop = sitk.RegionOfInterest(sitk.ReadImage(sample["inputs"][name]), [int(s) for s in size],
                                     [int(v) for v in lo])
        inputs[name] = str(folder / f"{name}.nii.gz")
        sitk.WriteImage(crop, inputs[name])
    sitk.WriteImage(sitk.RegionOfInterest(label, [int(s) for s in size], [int(v) for v in lo]),
                    str(folder / "label.nii.gz"))
    return inputs


def cropped_stroke_sample(folder: Path, half_mm: float) -> dict[str, str]:
    """The stroke sample's DWI and ADC (and label.nii.gz) cropped to ±``half_mm`` around its lesion."""
    return cropped_sample("stroke", folder, half_mm)


def run_in_slicer(tmp_path, body: str, version: str = "5.10.0") -> dict:
    """Start the stand-in Slicer with the module (startup completed, widget set up and entered),
    run ``body`` (it fills the dict ``out``) and return ``out``."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(STANDIN)!r})
        import harness
        harness.start({str(MODULE_DIR)!r}, {version!r}, {sys.executable!r}, {sysconfig.get_paths()["purelib"]!r})
        import slicer, qt
        module, _ = harness.load_module({str(MODULE_DIR)!r}, "LesionFactorizer")
        harness.startup_completed()
        widget = harness.create_widget(module, "LesionFactorizer")
        widget.enter()
        out = {{}}
    """) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
