"""The segment settings: one definition (``SegmentSettings``) → CLI options, worker argv, the one
check, report.json's "settings" section and back."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from helpers import save_threshold_model, write_case

from LesionFactorizerLib.cli import build_parser
from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.settings import BY_NAME, OPTIONS, SegmentSettings
from LesionFactorizerLib.core.tasks import TASKS

# every setting away from its default (a run on the stroke threshold model accepts all of them)
CHANGED = {"task": "stroke", "models": ("a", "b c"), "device": "cpu", "preset": "fast", "tta": False,
           "nmf_iters": 3, "skip_nmf": ("bridge", "decoder1"), "overlap": 0.25, "windows": "whole",
           "sw_batch_size": 2, "backend": "eager", "components": True, "component_layers": ("decoder1",),
           "effects": True, "probabilities": True, "uncertainty": True, "threshold": 0.4, "min_lesion_mm3": 2.5,
           "format": "nrrd", "overview": False, "progress": "jsonl", "overwrite": True, "dicom_seg": True,
           "register": "never", "postprocess": "argmax"}


def _parse(command, argv):
    base = ["segment", "-o", "out"] if command == "segment" else ["batch", "cases.csv", "-o", "out"]
    return build_parser().parse_args(base + argv)


def _parser_actions(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {flag: a for a in sub._actions for flag in a.option_strings}


@pytest.mark.parametrize("command", ["segment", "batch"])
def test_argv_round_trips_through_the_generated_cli_options(command):
    assert set(CHANGED) == {f.name for f in fields(SegmentSettings)}   # every setting is exercised
    settings = SegmentSettings(**CHANGED)
    assert SegmentSettings.from_args(_parse(command, settings.to_argv())) == settings
    defaults = SegmentSettings.from_args(_parse(command, SegmentSettings().to_argv()))
    assert defaults == SegmentSettings() and SegmentSettings().to_argv() == []


@pytest.mark.parametrize("command", ["segment", "batch"])
def test_the_cli_options_are_the_dataclass_fields(command):
    """Flag, default, choices and help of each option come from the field that defines the setting."""
    actions = _parser_actions(command)
    for f in fields(SegmentSettings):
        action = actions[f.metadata["flag"]]
        assert action.dest == f.name and action.help == f.metadata["help"], f.name
        if f.metadata["choices"]:
            assert tuple(action.choices) == f.metadata["choices"], f.name
        if f.type != "bool" and not f.metadata["repeat"]:
            assert action.default == f.default, f.name
    assert all(name in actions["--task"].help for name in TASKS)   # the task names from the task registry
    assert [o.flag for o in OPTIONS if o.off_flag] == ["--tta"] and "--no-tta" in actions


@pytest.mark.parametrize("values, words", [
    ({"preset": "turbo"}, "unknown preset 'turbo'"), ({"device": "gpu"}, "unknown device"),
    ({"backend": "tensorrt"}, "unknown backend 'tensorrt'"), ({"register": "sometimes"}, "unknown register"),
    ({"format": "png"}, "unknown format"), ({"windows": "tiles"}, "unknown windows"),
    ({"overlap": 1.0}, "--overlap must be in"), ({"nmf_iters": 0}, "--nmf-iters must be at least 1"),
    ({"skip_nmf": ["encoder9"]}, "unknown NMF layer.*--skip-nmf"), ({"sw_batch_size": 0}, "--sw-batch-size"),
    ({"component_layers": ["decoder9"]}, "unknown NMF layer.*--component-layers"),
    ({"threshold": 1.0}, "--threshold"), ({"min_lesion_mm3": -1}, "--min-lesion-mm3"),
    ({"register": "rigid", "task": "stroke"}, "no inputs from another session")])
def test_one_check_refuses_impossible_settings(values, words):
    with pytest.raises(UserError, match=words):
        SegmentSettings(**values).check()


def test_preset_values_are_overridden_by_given_ones():
    assert SegmentSettings(preset="fast").check() == {"nmf_iters": 2, "skip_nmf": ["decoder1"], "tta": False,
                                                      "overlap": 0.25, "windows": "whole"}
    assert SegmentSettings(preset="fast", tta=True, skip_nmf=[]).check()["tta"] is True


def test_settings_round_trip_through_the_report_section():
    """Every setting, backend, register and preset included, comes back from report.json's entries."""
    settings = SegmentSettings(**CHANGED)
    report = {"task": "stroke", "models": [{"name": m, "path": m} for m in CHANGED["models"]],
              "settings": {**settings.to_report(), "window_plan": {"windows": 1}, "passes": 1}}
    assert SegmentSettings.from_report(json.loads(json.dumps(report))) == settings
    assert set(settings.to_report()) == {f.name for f in fields(SegmentSettings)} - {"task", "models"}
    with pytest.raises(UserError, match="report.json settings tta"):
        SegmentSettings.from_report({**report, "settings": {"tta": "yes"}})


def test_a_run_records_settings_that_repeat_it(tmp_path):
    """A real run's report.json gives back the settings it ran with (the values it resolved: the
    preset's, the window batch it chose), so a re-run from the report repeats it."""
    paths = write_case(tmp_path / "in")
    model = save_threshold_model(tmp_path / "thr.safetensors")
    settings = SegmentSettings(task="stroke", models=[model], device="cpu", preset="best", tta=False, overlap=0.25,
                               windows="sliding", backend="eager", probabilities=True, uncertainty=True,
                               threshold=0.4, min_lesion_mm3=2.5, format="nrrd", overview=False, register="never",
                               progress="none", overwrite=True)
    from LesionFactorizerLib.pipeline.segment import Segmenter

    result = Segmenter(settings).segment(paths, tmp_path / "out", overwrite=True)
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    recorded = SegmentSettings.from_report(report)
    assert recorded == settings.but(sw_batch_size=result.report.settings["sw_batch_size"])
    assert report["settings"]["backend"] == "eager" and report["settings"]["backend_ran"] == "eager"


def test_settings_given_as_json_are_type_checked():
    assert SegmentSettings.from_json({"models": ["m"], "tta": None}) == SegmentSettings(models=("m",))
    for values, words in (({"tta": 1}, "true or false"), ({"overlap": "0.5"}, "a number"),
                          ({"models": "m"}, "a list of names"), ({"nmf_iters": 2.0}, "int"),
                          ({"turbo": True}, "not a setting")):
        with pytest.raises(UserError, match=words):
            SegmentSettings.from_json(values)
    assert BY_NAME["overview"].flag == "--no-overview" and BY_NAME["models"].repeat


def test_a_report_from_before_every_setting_was_recorded_reads_as_it_ran():
    """Such reports (no ``register`` in "settings") named the backend that ran under ``backend``
    (e.g. eager+compile, not a setting), the register mode under "registration", and, before window
    plans, no ``windows`` (sliding ran)."""
    old = {"task": "ms-new", "model": {"name": "m", "path": "/m.safetensors"},
           "settings": {"preset": "fast", "device": "cpu", "tta": False, "backend": "eager+compile", "passes": 1},
           "registration": {"mode": "never"}}
    settings = SegmentSettings.from_report(old)
    assert settings == SegmentSettings(task="ms-new", models=["/m.safetensors"], preset="fast", device="cpu",
                                       tta=False, windows="sliding", register="never")
    settings.check()
