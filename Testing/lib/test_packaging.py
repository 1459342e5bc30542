"""A wheel (non-editable install) carries what `demo` and `train` need: demo models, sample cases,
training configs — not only the editable checkout."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers import REPO as ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("compiler", ["the system's", "a failing one"])
def test_wheel_ships_demo_models_sample_cases_and_configs(tmp_path, compiler):
    # build from a copy: setuptools leaves a build/ folder beside the sources
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("LesionFactorizerLib", "training", "Resources"):   # not an in-place build's kernel
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "window_nmf.[!c]*"))
    # offline when the environment already has a new enough setuptools; else pip fetches one
    isolation: list[str] = []
    try:
        import setuptools

        if int(setuptools.__version__.split(".")[0]) >= 77:
            isolation = ["--no-build-isolation"]
    except ImportError:
        pass
    env = {**os.environ, **({"CC": "false"} if compiler == "a failing one" else {})}
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp_path),
                        str(src)], capture_output=True, text=True, timeout=300, encoding="utf-8", env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    (wheel,) = tmp_path.glob("lesion_factorizer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    res = "LesionFactorizerLib/Resources/"
    for task in ("tumor", "stroke", "ms-new"):
        assert f"{res}Models/demo-{task}.safetensors" in names
        assert f"LesionFactorizerLib/training/configs/demo-{task}.yaml" in names
    manifest = json.loads((ROOT / "Resources" / "SampleData" / "manifest.json").read_text(encoding="utf-8"))
    for case in manifest["cases"].values():
        for file in [*case["inputs"].values(), case["label"]]:
            assert f"{res}SampleData/{file}" in names
    assert f"{res}SampleData/manifest.json" in names
    assert f"{res}Models/catalog.json" in names and "LesionFactorizerLib/model-catalog.schema.json" in names
    assert "LesionFactorizerLib/core/report.schema.json" in names
    assert "LesionFactorizerLib/nn/window_nmf.c" in names  # the kernel source native.py compiles
    assert not any(n.startswith(("Testing/", "out/", "LesionFactorizer/")) for n in names)
    # pip sees the requirements and extras of their one home, core/requirements.py
    from LesionFactorizerLib.core.requirements import EXTRAS, REQUIRES

    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    fields = zipfile.ZipFile(wheel).read(metadata).decode("utf-8").splitlines()
    requires = [line.split(": ", 1)[1].replace(" ", "") for line in fields if line.startswith("Requires-Dist: ")]
    assert [r for r in requires if ";" not in r] == list(REQUIRES)
    assert sorted(line.split(": ", 1)[1] for line in fields if line.startswith("Provides-Extra: ")) == sorted(EXTRAS)
    assert 'slicerio>=1.4;extra=="slicer"' in requires and 'kneed>=0.8;extra=="dev"' in requires
    # the compiled window-NMF kernel and its manifest, unless no compiler works: then the wheel
    # still builds, without them (nn/native.py runs the PyTorch path)
    zipped = zipfile.ZipFile(wheel)
    kernel = [n for n in names if n.startswith("LesionFactorizerLib/nn/window_nmf.") and not n.endswith(".c")]
    if compiler == "a failing one" or shutil.which("cc") is None:
        assert kernel == []
    else:
        record = json.loads(zipped.read("LesionFactorizerLib/nn/window_nmf.json"))
        library = zipped.read(f"LesionFactorizerLib/nn/{record['library']}")
        assert sorted(kernel) == sorted(["LesionFactorizerLib/nn/window_nmf.json", f"LesionFactorizerLib/nn/{record['library']}"])
        assert (len(library), hashlib.sha256(library).hexdigest()) == (record["bytes"], record["sha256"])
