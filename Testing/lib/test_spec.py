"""The model spec (metadata parsed once, strictly) and the output spec (the label rule both ways)."""

from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.modelfile import make_metadata, read_header, read_spec
from LesionFactorizerLib.core.outputspec import OutputSpec
from LesionFactorizerLib.core.spec import SCHEMA_PATH, parse_spec, schema_text
from LesionFactorizerLib.core.tasks import TASKS, get_task
from LesionFactorizerLib.training.targets import channel_labels, decode_regions, encode

BUNDLED = sorted((REPO / "Resources" / "Models").glob("*.safetensors"))


def test_bundled_models_parse_into_typed_fields():
    assert len(BUNDLED) == 3
    for path in BUNDLED:
        spec = read_spec(path)
        assert spec.task.name == path.stem.removeprefix("demo-")
        assert isinstance(spec.inputs, tuple) and list(spec.inputs) == read_header(path).metadata["inputs"]
        assert spec.preprocessing.normalization == "zscore-nonzero" and spec.preprocessing.crop_foreground
        assert len(spec.preprocessing.patch_size) == 3 and all(isinstance(s, float) for s in spec.preprocessing.spacing)
        assert spec.outputs.activation == "sigmoid" and spec.weights.dtype == "float16"
        assert spec.provenance.name == path.stem and spec.provenance.training["steps"] > 0


def _meta():
    meta = make_metadata("tumor", {"name": "unet", "kwargs": {"in_channels": 4, "out_channels": 3}},
                         name="m", patch_size=(32, 32, 32))
    meta["weights"] = {"sha256": "0" * 64, "dtype": "float32", "tensors": 1}
    return meta


@pytest.mark.parametrize("change, words", [
    (lambda m: m["preprocessing"].update(normalization="minmax"), "unknown preprocessing.normalization 'minmax'"),
    (lambda m: m["preprocessing"].update(normalisation="zscore-nonzero"), "unknown preprocessing key"),
    (lambda m: m.update(postprocesing={}), "unknown model metadata key"),
    (lambda m: m["postprocessing"].update(treshold=0.4), "unknown postprocessing key"),
    (lambda m: m["outputs"].update(activation="relu"), "'outputs' must be"),
    (lambda m: m["outputs"].update(channels=["ET", "ET", "WT"]), "duplicate output channel"),
    (lambda m: m["labels"][0].update(value=4), "differ from task 'tumor'"),
    (lambda m: m["preprocessing"].update(crop_foreground="yes"), "crop_foreground must be true or false"),
    (lambda m: m["weights"].update(dtype="int8"), "weights.dtype"),
    (lambda m: m["preprocessing"].update(patch_size=[32, 32, True]), "three positive integers"),
])
def test_unknown_or_malformed_values_are_errors(change, words):
    meta = _meta()
    parse_spec(meta)                       # the document itself is valid …
    bad = copy.deepcopy(meta)
    change(bad)
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        parse_spec(bad, where="m.safetensors")


def test_published_schema_is_the_generated_one():
    # regenerate with `python -m LesionFactorizerLib.core.spec` after changing the rules
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text()
    schema = json.loads(schema_text())
    assert schema["properties"]["preprocessing"]["properties"]["normalization"] == {"enum": ["zscore-nonzero"]}
    assert set(schema["required"]) <= set(schema["properties"])
    for path in BUNDLED:   # every key a bundled file uses is in the schema, nothing more is required
        meta = read_header(path).metadata
        assert set(schema["required"]) <= set(meta) <= set(schema["properties"])


@pytest.mark.slow
def test_spec_is_torch_free_and_runs_on_python_39():
    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))) or [sys.executable]
    code = ("import sys; from LesionFactorizerLib.modelfile import read_spec; "
            f"s = read_spec({str(REPO / 'Resources/Models/demo-tumor.safetensors')!r}); "
            "from LesionFactorizerLib.core.outputspec import OutputSpec; "
            "o = OutputSpec.resolve(s.task, s.outputs.activation, s.outputs.channels, s.postprocessing.given()); "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules); print(o.mode)")
    out = subprocess.run([pythons[-1], "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() == "hierarchical"


def _all_labels(task):
    values = [0] + [lb.value for lb in task.labels]
    return np.array(values * 3, dtype=np.uint8).reshape(1, 1, -1)


@pytest.mark.parametrize("task_name, mode", [("tumor", None), ("tumor", "argmax"), ("stroke", None),
                                             ("ms-new", None), ("stroke", "argmax")])
def test_training_targets_decode_back_to_the_labels(task_name, mode):
    """Encoding (training) and decoding (inference) are one rule: labels → targets → labels."""
    task = get_task(task_name)
    spec = OutputSpec.for_task(task, mode)
    labels = _all_labels(task)
    targets = encode(torch.from_numpy(labels)[None, None], spec.channel_values)[0].numpy()
    assert targets.shape[0] == len(spec.channels)
    assert np.array_equal(spec.to_labels(targets * 0.98 + 0.01), labels)
    # validation regions (torch) agree with the labels inference writes
    regions = {r.name: tuple(r.labels) for r in task.regions} or {task.labels[0].name: (task.labels[0].value,)}
    logits = torch.from_numpy(targets * 8 - 4)[None]
    masks = decode_regions(logits, channel_labels(task, mode), spec.mode, regions)
    for name, values in regions.items():
        assert np.array_equal(masks[name][0].numpy(), np.isin(labels, values)), name


def test_inconsistent_nested_scores_are_made_consistent_the_same_way_in_numpy_and_torch():
    spec = OutputSpec.for_task(get_task("tumor"))
    rng = np.random.default_rng(0)
    probs = rng.random((3, 4, 5, 6)).astype(np.float32)
    numpy_masks = spec.region_masks(probs, 0.5)
    torch_masks = spec.region_masks(torch.from_numpy(probs), 0.5)
    assert not np.array_equal(numpy_masks["ET"], probs[0] > 0.5)           # the nesting changed something
    for name in spec.channels:
        assert np.array_equal(numpy_masks[name], torch_masks[name].numpy())
    assert not (numpy_masks["ET"] & ~numpy_masks["TC"]).any() and not (numpy_masks["TC"] & ~numpy_masks["WT"]).any()


def test_export_defaults_come_from_the_output_spec():
    for task in TASKS.values():
        for mode in (None, "argmax"):
            spec = OutputSpec.for_task(task, mode)
            meta = make_metadata(task.name, {"name": "unet", "kwargs": {"out_channels": len(spec.channels)}})
            assert meta["outputs"] == spec.as_outputs()
