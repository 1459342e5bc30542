"""Module-side logic that needs no Slicer: input auto-assignment and messages, report → table rows,
component-map reading with physical geometry, dependency check, model cards and sample cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "LesionFactorizer"))

from LesionFactorizerLib.core.tasks import get_task  # noqa: E402
from LesionFactorizerModuleLib import components, dependencies, inputs, report, samples  # noqa: E402
from LesionFactorizerModuleLib.outputs import find_outputs  # noqa: E402

TUMOR = get_task("tumor")


# ---- inputs -------------------------------------------------------------------------------------

def test_brats_volume_names_are_assigned_to_the_right_inputs():
    volumes = {"n1": "BraTS-GLI-00001-000-t1c", "n2": "BraTS-GLI-00001-000-t1n", "n3": "BraTS-GLI-00001-000-t2f",
               "n4": "BraTS-GLI-00001-000-t2w", "n5": "Segmentation preview"}
    got = inputs.assign_inputs(TUMOR, volumes)
    assert got == {"flair": "n3", "t1": "n2", "t1ce": "n1", "t2": "n4"}
    assert inputs.input_problems(TUMOR, got) == {}


def test_user_choices_are_kept_and_volumes_used_once():
    volumes = {"a": "case_flair", "b": "case_t1", "c": "case_t1ce", "d": "case_t2"}
    got = inputs.assign_inputs(TUMOR, volumes, keep={"flair": "d"})  # the user picked T2 for FLAIR
    assert got["flair"] == "d"
    assert got["t2"] is None  # not reused, although its name matches
    assert got["t1"] == "b" and got["t1ce"] == "c"
    assert inputs.assign_inputs(TUMOR, volumes, keep={"flair": "gone"})["flair"] == "a"  # removed node ignored


def test_ambiguous_names_are_left_for_the_user():
    volumes = {"a": "flair", "b": "flair"}  # same name twice in the scene
    assert inputs.assign_inputs(TUMOR, volumes)["flair"] is None


def test_problems_are_explained_in_words():
    problems = inputs.input_problems(TUMOR, {"flair": "x", "t1": "x", "t1ce": None, "t2": "y"})
    assert problems == {"t1": "same volume as T2-FLAIR", "t1ce": "missing: select a volume"}
    text = inputs.problems_summary(TUMOR, problems)
    assert text == ("Select T1 contrast-enhanced. Each input needs its own volume: "
                    "T1 (native) (same volume as T2-FLAIR).")
    stroke = get_task("stroke")
    assert inputs.input_problems(stroke, {"dwi": "a", "adc": "b", "flair": None}) == {}  # optional FLAIR
    assert inputs.input_label(stroke.input("flair"), None) == "FLAIR (optional):"
    assert inputs.input_label(TUMOR.input("t1ce"), "missing: select a volume").endswith("⚠ missing: select a volume")


# ---- report -------------------------------------------------------------------------------------

REPORT = {
    "task": "tumor",
    "regions": {"WT": {"title": "Whole tumour", "labels": [1, 2, 3], "volume_ml": 1.75},
                "TC": {"title": "Tumour core", "labels": [1, 3], "volume_ml": 1.75}},
    "labels": {"NCR": {"value": 1, "volume_ml": 1.25, "voxels": 1250},
               "ET": {"value": 3, "volume_ml": 0.5, "voxels": 500}},
    "lesion_count": 2, "lesions": [{"id": 1}, {"id": 2}], "warnings": ["t2 resampled onto flair grid"],
}


def test_report_file_must_be_an_object(tmp_path):
    (tmp_path / "report.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="not a report"):
        report.read_report(tmp_path / "report.json")


# ---- component maps -----------------------------------------------------------------------------

def _oblique_direction():
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return rot @ np.diag([1, -1, 1])  # oblique and with a flipped axis


def _vector_image(k: int, size=(6, 5, 4), spacing=(2.0, 2.4, 4.0), origin=(-7.0, 3.0, 11.0)):
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    array = rng.random((size[2], size[1], size[0], k)).astype(np.float32)
    image = sitk.GetImageFromArray(array, isVector=True)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(_oblique_direction().ravel()))
    return image, array


# ---- dependencies -------------------------------------------------------------------------------

def test_dependency_check_on_this_environment_finds_torch():
    problems = dependencies.check()
    assert "torch" not in {p.dependency.name for p in problems}  # installed in the test venv
    import numpy
    import SimpleITK

    pins = dependencies.protected_constraints().split()
    assert f"numpy=={numpy.__version__}" in pins and f"SimpleITK=={SimpleITK.Version.VersionString()}" in pins


def _fake_wheel(folder: Path, name: str, version: str) -> None:
    """A minimal valid wheel (metadata only): lets pip's resolver "see" another version offline."""
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for arcname, text in files.items():
            whl.writestr(arcname, text)


@pytest.mark.slow
def test_constraints_turn_a_silent_numpy_replacement_into_an_error(tmp_path):
    """Real pip resolver, offline: an older "numpy" is available; without our pins pip would
    replace Slicer's numpy, with them it refuses."""
    import subprocess

    _fake_wheel(tmp_path, "numpy", "0.0.1")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(dependencies.protected_constraints(), encoding="utf-8")
    base = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(tmp_path),
            "--disable-pip-version-check", "numpy<1"]
    unprotected = subprocess.run(base, capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert unprotected.returncode == 0 and "numpy-0.0.1" in unprotected.stdout  # would replace it
    protected = subprocess.run(base + ["-c", str(constraints)], capture_output=True, text=True, timeout=120, encoding="utf-8")
    assert protected.returncode != 0 and "numpy" in protected.stderr


def test_install_plan_routes_torch_to_pytorch_extension_and_protects_bundled():
    versions = {"torch": None, "safetensors": "0.4.5", "einops": "0.5.0", "scipy": "1.14",
                "tqdm": "4.66", "pyyaml": "6.0.2", "matplotlib": "3.9", "SimpleITK": "2.4.0", "numpy": "1.10"}
    problems = dependencies.check(lambda name: versions.get(name))
    assert {p.dependency.name for p in problems} == {"torch", "einops", "numpy"}
    plan = dependencies.install_plan(problems)
    assert plan.torch == "torch>=2.1,<3"
    assert plan.pip == ["einops>=0.6,<1"]
    assert len(plan.blocked) == 1 and "numpy" in plan.blocked[0]
    assert dependencies.pip_arguments(plan) == ["--upgrade-strategy", "only-if-needed", "einops>=0.6,<1"]
    assert dependencies.pip_arguments(plan, "/tmp/c.txt")[2:4] == ["-c", "/tmp/c.txt"]
    assert dependencies.protected_constraints(lambda name: versions.get(name)) == "numpy==1.10\nSimpleITK==2.4.0\n"
    text = plan.confirmation_text()
    assert "torch>=2.1,<3" in text and "einops>=0.6,<1" in text
    assert "numpy" not in dependencies.pip_arguments(plan) and "SimpleITK" not in " ".join(plan.pip)


# ---- model cards ----------------------------------------------------------------------------------

def test_model_cards_list_import_and_report_broken_files(tmp_path, monkeypatch):
    from LesionFactorizerLib.modelfile import make_metadata, save_model_file
    from LesionFactorizerLib.presets import build_architecture

    from LesionFactorizerModuleLib import models

    user = tmp_path / "user-models"
    monkeypatch.setenv("LESIONFACTORIZER_MODELS", str(user))
    kwargs = {"in_channels": 2, "out_channels": 1}
    source = tmp_path / "download" / "my-stroke.safetensors"
    meta = make_metadata("stroke", {"name": "threshold-net", "kwargs": kwargs}, name="my-stroke",
                         description="A <b>test</b> model", license="CC-BY-4.0",
                         training={"dataset": "ISLES'22 phantoms"})
    save_model_file(source, build_architecture("threshold-net", kwargs), meta)

    card = models.import_model(source)
    assert card.path == user / "my-stroke.safetensors" and card.path.is_file()
    assert card.task == "stroke" and card.source == "user"
    html = card.html()
    assert "A &lt;b&gt;test&lt;/b&gt; model" in html  # escaped
    assert "CC-BY-4.0" in html and "ISLES&#x27;22 phantoms" in html and "dwi, adc" in html
    assert "not a Factorizer" in html

    (user / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    errors: list[str] = []
    cards = models.list_cards("stroke", errors=errors)
    assert "my-stroke" in [c.name for c in cards]
    assert len(errors) == 1 and errors[0].startswith("broken.safetensors:")
    assert "my-stroke" not in [c.name for c in models.list_cards("tumor")]
    with pytest.raises(ValueError, match="not a model file"):
        models.import_model(tmp_path / "weights.pt")


# ---- sample data ----------------------------------------------------------------------------------

def test_sample_cases_come_from_the_manifest_with_checksums(tmp_path):
    for name in ("t_flair", "t_t1", "t_t1ce", "t_t2", "s_dwi", "s_adc"):
        (tmp_path / f"{name}.nii.gz").write_bytes(name.encode())
    manifest = {"cases": {
        "tumor": {"inputs": {"t2": "t_t2.nii.gz", "flair": "t_flair.nii.gz", "t1ce": "t_t1ce.nii.gz",
                             "t1": "t_t1.nii.gz"}, "sha256": {"t_flair.nii.gz": "ab" * 32}},
        "stroke": {"inputs": {"dwi": "s_dwi.nii.gz", "adc": "s_adc.nii.gz"}},  # optional FLAIR absent
        "unknown-task": {"inputs": {}}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (tmp_path / "stroke_thumbnail.png").write_bytes(b"png")
    cases = {c.task: c for c in samples.discover_sample_cases(tmp_path)}
    assert set(cases) == {"tumor", "stroke"}
    tumor = cases["tumor"]
    assert [f.input_name for f in tumor.files] == ["flair", "t1", "t1ce", "t2"]  # the task's order
    assert tumor.files[0].sha256 == "ab" * 32  # recorded checksum used, so corruption is detected
    assert tumor.files[1].sha256 == samples.sha256(tmp_path / "t_t1.nii.gz")
    assert tumor.files[1].uri.startswith("file://") and tumor.thumbnail is None
    assert cases["stroke"].thumbnail == tmp_path / "stroke_thumbnail.png"
    # node names are recognised again by the input patterns, so loaded samples fill the selectors
    names = {f"n{i}": tumor.node_name(f) for i, f in enumerate(tumor.files)}
    assert inputs.assign_inputs(TUMOR, names) == {"flair": "n0", "t1": "n1", "t1ce": "n2", "t2": "n3"}
    assert samples.discover_sample_cases(tmp_path / "nowhere") == []


def test_bundled_sample_cases_match_their_checksums():
    root = REPO / "Resources" / "SampleData"
    assert (root / "manifest.json").is_file(), "the bundled sample data (Resources/SampleData) is missing"
    cases = samples.discover_sample_cases(root)
    assert {c.task for c in cases} == {"tumor", "stroke", "ms-new"}
    for case in cases:
        assert {f.input_name for f in case.files} >= set(get_task(case.task).required_inputs)
        for f in case.files:
            assert samples.sha256(f.path) == f.sha256, f.path.name
        names = {f.input_name: case.node_name(f) for f in case.files}
        assert inputs.assign_inputs(get_task(case.task), {v: v for v in names.values()}) == \
            {spec.name: names.get(spec.name) for spec in get_task(case.task).inputs}


def test_installer_covers_exactly_the_library_dependencies():
    """The first-use installer installs the library's own requirements (one home: core/requirements),
    from their floors to below the next major version, torch through the PyTorch installer, and never
    touches what Slicer bundles."""
    from packaging.requirements import Requirement

    from LesionFactorizerLib.core.requirements import REQUIRES

    floors = {Requirement(r).name.lower(): Requirement(r) for r in REQUIRES}
    assert {d.name.lower() for d in dependencies.DEPENDENCIES} | set(dependencies.NOT_NEEDED_IN_SLICER) == set(floors)
    by_name = {d.name.lower(): d for d in dependencies.DEPENDENCIES}
    assert by_name["torch"].requirement == "torch>=2.1,<3" and by_name["torch"].installer == "pytorch"
    assert by_name["scipy"].requirement == "scipy>=1.10,<2" and by_name["scipy"].installer == "pip"
    assert {n for n, d in by_name.items() if d.bundled_with_slicer} == {"simpleitk", "numpy"}
    for name, dep in by_name.items():
        spec = Requirement(dep.requirement).specifier
        assert floors[name].specifier.contains(next(s.version for s in spec if s.operator == ">="))
        assert dep.bundled_with_slicer or any(s.operator == "<" for s in spec), name
