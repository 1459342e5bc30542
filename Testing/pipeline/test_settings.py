"""The segment settings: one definition → CLI options, worker argv and one check."""

from __future__ import annotations

import pytest

from LesionFactorizerLib.cli import build_parser
from LesionFactorizerLib.cli.segment import options_from_args
from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.pipeline.io import IMAGE_FORMATS
from LesionFactorizerLib.pipeline.settings import BY_NAME, FORMATS, OPTIONS, check, to_argv


def _parse(command, argv):
    base = ["segment", "-o", "out"] if command == "segment" else ["batch", "cases.csv", "-o", "out"]
    return build_parser().parse_args(base + argv)


@pytest.mark.parametrize("command", ["segment", "batch"])
def test_argv_round_trips_through_the_generated_cli_options(command):
    values = {"task": "tumor", "models": ["a", "b c"], "device": "cpu", "preset": "fast", "tta": False,
              "nmf_iters": 3, "skip_nmf": ["bridge", "decoder1"], "overlap": 0.25, "windows": "whole",
              "sw_batch_size": 2, "backend": "onnx",
              "components": True, "component_layers": ["decoder1"], "effects": True, "probabilities": True,
              "uncertainty": True,
              "threshold": 0.4,
              "min_lesion_mm3": 2.5, "format": "nrrd", "overview": False, "progress": "jsonl", "overwrite": True,
              "dicom_seg": True, "register": "never", "postprocess": "argmax"}
    assert set(values) == set(BY_NAME)           # every option is exercised
    opts = options_from_args(_parse(command, to_argv(values)))
    for name, value in values.items():
        if name != "progress":
            assert getattr(opts, name) == value, name
    defaults = options_from_args(_parse(command, to_argv({name: o.default for name, o in BY_NAME.items()})))
    assert defaults.tta is None and defaults.overview and defaults.models == [] and not defaults.components


def test_output_formats_are_the_writers():
    assert FORMATS == tuple(IMAGE_FORMATS)


@pytest.mark.parametrize("values, words", [
    ({"preset": "turbo"}, "unknown preset 'turbo'"), ({"device": "gpu"}, "unknown device"),
    ({"backend": "tensorrt"}, "unknown backend 'tensorrt'"),
    ({"overlap": 1.0}, "--overlap must be in"), ({"nmf_iters": 0}, "--nmf-iters must be at least 1"),
    ({"skip_nmf": ["encoder9"]}, "unknown NMF layer.*--skip-nmf"), ({"sw_batch_size": 0}, "--sw-batch-size"),
    ({"component_layers": ["decoder9"]}, "unknown NMF layer.*--component-layers"),
    ({"threshold": 1.0}, "--threshold"), ({"min_lesion_mm3": -1}, "--min-lesion-mm3")])
def test_one_check_refuses_impossible_settings(values, words):
    with pytest.raises(UserError, match=words):
        check(values)


def test_preset_values_are_overridden_by_given_ones():
    assert check({"preset": "fast"}) == {"nmf_iters": 2, "skip_nmf": ["decoder1"], "tta": False, "overlap": 0.25,
                                        "windows": "sliding"}
    assert check({"preset": "fast", "tta": True, "skip_nmf": []})["tta"] is True
    assert [o.flag for o in OPTIONS if o.off_flag] == ["--tta"]


def test_segment_options_defaults_are_the_settings_defaults():
    """The library's SegmentOptions and the CLI/Slicer settings share their defaults (one home:
    OPTIONS); a setting whose default lives in a speed preset is None in both."""
    from dataclasses import MISSING, fields

    from LesionFactorizerLib.pipeline.segment import SegmentOptions

    for f in fields(SegmentOptions):
        if f.name not in BY_NAME:
            continue
        default = f.default_factory() if f.default is MISSING else f.default
        expected = BY_NAME[f.name].default
        if BY_NAME[f.name].repeat:
            expected = list(expected)
        assert default == expected or (default is None and expected is None), f.name
