"""report.json and the output files have one spec (``reportspec``): the writer writes through it,
the readers parse through it, and the published JSON Schema is generated from it."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, save_threshold_model, write_case

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.pipeline.io import IMAGE_FORMATS
from LesionFactorizerLib.pipeline.segment import output_claims, segment_case
from LesionFactorizerLib.core.settings import SegmentSettings
from LesionFactorizerLib.core.reportspec import (FOLDER_KEY, OUTPUTS, REPORT_NAME, SCHEMA_PATH, Report, parse_report,
                                            read_report, schema_text)



def _valid(value, schema: dict, where: str = "$") -> list[str]:
    """The JSON Schema keywords report.schema.json uses, checked (jsonschema is not a dependency)."""
    kinds = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list,
             "null": type(None)}
    errors = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(isinstance(value, kinds[t]) and not (isinstance(value, bool) and t in ("integer", "number"))
                   for t in types):
            return [f"{where}: {type(value).__name__} is not {types}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{where}: below {schema['minimum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        errors += [f"{where}: {key!r} is missing" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            if key in schema.get("properties", {}):
                errors += _valid(item, schema["properties"][key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: {key!r} is not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _valid(item, schema["additionalProperties"], f"{where}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        for n, item in enumerate(value):
            errors += _valid(item, schema.get("items", {}), f"{where}[{n}]")
    return errors


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real run with every optional output a threshold model can give."""
    tmp = tmp_path_factory.mktemp("reportspec")
    paths = write_case(tmp / "in")
    model = save_threshold_model(tmp / "thr.safetensors")
    settings = SegmentSettings(task="stroke", models=[model], device="cpu", probabilities=True, uncertainty=True)
    return segment_case(paths, str(tmp / "out"), settings)


def test_the_published_schema_is_the_generated_one():
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text()
    schema = json.loads(schema_text())
    assert set(schema["required"]) <= set(schema["properties"])
    assert schema["properties"]["outputs"]["required"] == [o.key for o in OUTPUTS if o.required]


def test_a_real_report_validates_parses_and_is_what_segment_case_returned(run):
    """segment_case returns the report it wrote; the file validates against the published schema
    and parses back into the same sections."""
    path = Path(run.outputs[OUTPUTS.report.key])
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(run.report, Report)
    assert run.report.to_json() == on_disk
    assert _valid(on_disk, json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))) == []
    assert read_report(path.parent).to_json() == on_disk
    assert list(on_disk)[:2] == ["format", "format_version"]
    assert "components_best" not in on_disk and on_disk["components"] is None   # left out vs null, as before


def test_the_schema_check_used_above_can_fail(run):
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    report = run.report.to_json()
    assert _valid({**report, "lesion_count": "2"}, schema) == ["$.lesion_count: str is not ['integer']"]
    assert _valid({**report, "inputs": [{"name": "dwi"}]}, schema) == ["$.inputs[0]: 'path' is missing"]


def test_every_output_a_run_lists_is_in_the_table_and_named_by_it(run):
    folder = Path(run.outputs[FOLDER_KEY])
    listed = run.report.outputs
    assert set(listed) <= set(OUTPUTS.keys())
    assert [o.key for o in OUTPUTS if o.required] == [k for k in listed if OUTPUTS.__getattr__(k).required]
    for key, name in listed.items():
        output = getattr(OUTPUTS, key)
        assert name == output.file_name(IMAGE_FORMATS["nii.gz"], IMAGE_FORMATS["nii.gz"])
        assert run.outputs[key] == str(folder / name) and (folder / name).exists()
    # everything in the folder is claimed, so a rerun of another format replaces it
    assert {p.name for p in folder.iterdir()} <= set(output_claims())


def test_a_seg_nrrd_run_names_its_maps_by_the_map_extension():
    assert OUTPUTS.segmentation.file_name(".seg.nrrd", ".nrrd") == "segmentation.seg.nrrd"
    assert OUTPUTS.probabilities.file_name(".seg.nrrd", ".nrrd") == "probabilities.nrrd"
    assert OUTPUTS.lesions.file_name(".seg.nrrd", ".nrrd") == "lesions.csv" == OUTPUTS.lesions.name
    assert REPORT_NAME == "report.json"


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("lesion_count"), "'lesion_count' is missing"),
    (lambda r: r.update(warnings="none"), "'warnings' is str, not list"),
    (lambda r: r["outputs"].pop("report"), "outputs 'report' is missing"),
    (lambda r: r.update(components_best_effect={"layer": "decoder1"}), "components_best_effect 'component' is missing"),
    (lambda r: r["inputs"][0].update(sha256="abc"), "inputs[0] 'sha256' is not a SHA-256 checksum"),
])
def test_parsing_refuses_what_the_schema_refuses(run, edit, message):
    report = run.report.to_json()
    edit(report)
    with pytest.raises(UserError, match=re.escape(message)):
        parse_report(report)
    assert _valid(report, json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))) != []


def test_a_newer_report_format_is_refused_with_what_to_do(run):
    with pytest.raises(UserError, match=re.escape("newer LesionFactorizer (report format 2); update")):
        parse_report({**run.report.to_json(), "format_version": 2})


def test_the_module_imports_every_output_by_its_key(run):
    sys.path.insert(0, str(REPO / "LesionFactorizer"))
    from LesionFactorizerModuleLib.outputs import find_outputs

    files = find_outputs(run.outputs[FOLDER_KEY], run.outputs)
    for key in run.report.outputs:
        assert getattr(files, key) == Path(run.outputs[key])
    assert files.dicom_seg is None and files.components is None


def test_reportspec_is_torch_free_and_runs_on_python_39(run):
    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))) or [sys.executable]
    code = ("import sys; from LesionFactorizerLib.core.reportspec import read_report; "
            f"r = read_report({run.outputs[FOLDER_KEY]!r}); "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules); "
            "print(r.task, r.lesion_count)")
    out = subprocess.run([pythons[-1], "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.split() == ["stroke", str(run.report.lesion_count)]
