"""The segment settings: one definition of every setting a segmentation run takes.

:class:`SegmentSettings` is that definition: each field is a setting, with its default, and its
``metadata`` says how the command line spells it (flag, help, choices, metavar, list or repeated
flag, "off" switch). From it come the ``segment`` / ``batch`` options (:func:`add_options`,
:meth:`SegmentSettings.from_args`), the one check (:meth:`SegmentSettings.check`), the worker's
argument list the Slicer module launches (:meth:`SegmentSettings.to_argv`), report.json's
``settings`` section (:meth:`SegmentSettings.to_report` / :meth:`SegmentSettings.from_report`) and
settings given as JSON to the server (:meth:`SegmentSettings.from_json`).

Pure Python (3.9+), torch-free: the Slicer GUI process imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union, get_type_hints

from LesionFactorizerLib.core.errors import UserError
from LesionFactorizerLib.core.formats import IMAGE_FORMATS
from LesionFactorizerLib.core.layout import NMF_LAYERS
from LesionFactorizerLib.core.speed_presets import DEFAULT_SPEED_PRESET, SPEED_PRESETS, WINDOW_PLANS
from LesionFactorizerLib.core.tasks import TASKS, get_task

DEVICES = ("auto", "cpu", "cuda", "mps")
FORMATS = tuple(IMAGE_FORMATS)
PROGRESS = ("bar", "jsonl", "none")
# ms-new: register the baseline onto the follow-up (pipeline/registration.py says how)
REGISTER_MODES = ("auto", "rigid", "affine", "never")
BACKENDS = ("auto", "eager", "compile", "onnx")   # pipeline.backends runs them
POSTPROCESS = ("hierarchical", "argmax")          # outputspec.OutputSpec decodes by them
# settings report.json records in their own entries ("task", "models" with checksums), not in "settings"
REPORTED_ELSEWHERE = ("task", "models")


def one_of(names) -> str:
    """``a, b or c``: how help texts and messages list the choices."""
    names = list(names)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


TASK_NAMES = one_of(TASKS)


def _preset_help() -> str:
    """What each speed preset sets, from the presets themselves."""
    def one(name: str, preset: Mapping[str, Any]) -> str:
        iters = preset["nmf_iters"]
        parts = [f"{iters} NMF iterations" if iters else "the model's trained NMF iterations"]
        if preset["skip_nmf"]:
            parts.append(f"{', '.join(preset['skip_nmf'])} NMF short-circuited (NMF(X) := X)")
        parts += ["mirror TTA" if preset["tta"] else "no TTA", f"window overlap {preset['overlap']}",
                  f"{preset['windows']} windows"]
        return f"{name}{' (default)' if name == DEFAULT_SPEED_PRESET else ''}: {', '.join(parts)}"
    return "; ".join(one(name, preset) for name, preset in SPEED_PRESETS.items())


def _cli(flag: str, help: str, *, choices=(), metavar: Optional[str] = None, listed: bool = False,
         off_flag: str = "", off_help: str = "", repeat: bool = False) -> Dict[str, Any]:
    """A field's command-line spelling (its ``metadata``)."""
    return {"flag": flag, "help": help, "choices": tuple(choices), "metavar": metavar, "listed": listed,
            "off_flag": off_flag, "off_help": off_help, "repeat": repeat}


def _setting(default: Any, *args: Any, **kwargs: Any) -> Any:
    return field(default=default, metadata=_cli(*args, **kwargs))


@dataclass(frozen=True)
class SegmentSettings:
    """Every setting of a ``segment`` run (``batch``: of each case), its default and its flag.
    Lists are kept as tuples; a value is checked by :meth:`check`, not when the object is made."""

    task: Optional[str] = _setting(None, "--task", f"{TASK_NAMES} (default: the model's task)")
    models: Tuple[str, ...] = _setting(
        (), "--model", "model name or .safetensors path; repeat for an ensemble (mean of logits; under the "
        "hierarchical rule mean of probabilities, thesis 8.3.6); default: the task's default model",
        metavar="NAME|PATH", repeat=True)
    device: str = _setting("auto", "--device", "auto picks CUDA, then MPS, then CPU; CUDA out-of-memory falls back "
                           "to CPU", choices=DEVICES)
    preset: str = _setting(DEFAULT_SPEED_PRESET, "--preset", _preset_help(), choices=tuple(SPEED_PRESETS))
    tta: Optional[bool] = _setting(None, "--tta", "mirror test-time augmentation", off_flag="--no-tta",
                                   off_help="disable TTA (overrides --preset)")
    nmf_iters: Optional[int] = _setting(None, "--nmf-iters", "NMF (HALS) iterations at inference", metavar="N")
    skip_nmf: Optional[Tuple[str, ...]] = _setting(
        None, "--skip-nmf", f"short-circuit these NMF layers, NMF(X) := X as in thesis 7.4.5 ({', '.join(NMF_LAYERS)})",
        metavar="LAYER,...", listed=True)
    overlap: Optional[float] = _setting(None, "--overlap", "sliding-window overlap (default from --preset, 0.5)")
    windows: Optional[str] = _setting(
        None, "--windows", "window plan: sliding (windows of the trained patch size at --overlap) or whole (the fewest "
        "windows that fit memory, the whole foreground box in one where it fits; window-local networks only, others "
        "keep sliding); default from --preset", choices=WINDOW_PLANS)
    sw_batch_size: Optional[int] = _setting(None, "--sw-batch-size", "windows per forward pass (default: chosen from "
                                            "the window size and free memory; the result is the same either way)",
                                            metavar="N")
    backend: str = _setting("auto", "--backend", "how the network runs: auto (the backend measured fastest on this "
                            "machine, else eager), eager (PyTorch), compile (torch.compile; first run compiles, then "
                            "cached) or onnx (ONNX Runtime, needs the export extra)", choices=BACKENDS)
    components: bool = _setting(False, "--components", "write NMF component maps (Factorizer models)")
    component_layers: Optional[Tuple[str, ...]] = _setting(
        None, "--component-layers", "write only these layers' components (implies --components)",
        metavar="LAYER,...", listed=True)
    effects: bool = _setting(False, "--effects", "also rank every NMF component by its effect on the lesion: the "
                             "labels with that component dropped, as `counterfactual` gives them (implies "
                             "--components; costs the layers downstream of each NMF layer once per component)")
    probabilities: bool = _setting(False, "--probabilities", "also write probability maps")
    uncertainty: bool = _setting(False, "--uncertainty", "also write uncertainty.<ext>: voxel-wise predictive entropy "
                                 "(bits) of the lesion/background decision, on the segmentation's grid")
    threshold: Optional[float] = _setting(None, "--threshold", "probability threshold (default: task/model)")
    postprocess: Optional[str] = _setting(
        None, "--postprocess", "tumor: how probabilities become labels. hierarchical (thesis 8.3.6): whole tumour by "
        "threshold, tumour core thresholded inside it, enhancing vs necrosis inside the core, with the model's "
        "per-region thresholds; argmax: the most probable label per voxel (default: the model's)", choices=POSTPROCESS)
    min_lesion_mm3: Optional[float] = _setting(
        None, "--min-lesion-mm3", "remove smaller lesions (default: the task's, "
        f"{', '.join(f'{t.name} {t.postprocessing.min_lesion_mm3:g}' for t in TASKS.values())})")
    register: str = _setting("auto", "--register", "ms-new: put the baseline FLAIR on the follow-up. auto checks the "
                             "pair and registers it rigidly when misaligned; rigid / affine always register; never "
                             "only warns when the pair looks misaligned", choices=REGISTER_MODES)
    format: str = _setting("nii.gz", "--format", "image format of the outputs; seg.nrrd: Slicer's segmentation file "
                           "(segment names, colours, terminology; needs slicerio), probability maps then as .nrrd",
                           choices=FORMATS)
    dicom_seg: bool = _setting(False, "--dicom-seg", "also write segmentation.dcm, a DICOM Segmentation object "
                               "referencing the reference input's DICOM series (give that input as a DICOM series "
                               "folder; needs highdicom)")
    overview: bool = _setting(True, "--no-overview", "skip overview.png")
    progress: str = _setting("bar", "--progress", "bar (stderr), jsonl (one JSON event per line on stdout) or none",
                             choices=PROGRESS)
    overwrite: bool = _setting(False, "--overwrite", "replace existing results in the output folder")

    def __post_init__(self) -> None:
        # lists as tuples (the object stays hashable and unchangeable); one path given alone is a list of one
        for o in LIST_OPTIONS:
            value = getattr(self, o.name)
            if isinstance(value, (str, os.PathLike)):
                value = [value] if o.repeat else split_list(os.fspath(value))
            if value is not None:
                object.__setattr__(self, o.name, tuple(os.fspath(v) for v in value))

    def values(self) -> Dict[str, Any]:
        """Setting name → value (lists as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def check(self) -> Dict[str, Any]:
        """The one check of a run's settings; returns the speed settings in effect (the preset with
        the given tta / nmf_iters / skip_nmf / overlap / windows on top). Raises :class:`UserError`."""
        for o in OPTIONS:
            value = getattr(self, o.name)
            if o.choices and value is not None and value not in o.choices:
                raise UserError(f"unknown {o.name} {value!r}; choose one of: {', '.join(o.choices)}")
        speed = dict(SPEED_PRESETS[self.preset])
        speed.update({key: _plain(getattr(self, key)) for key in speed if getattr(self, key) is not None})
        if not 0.0 <= speed["overlap"] < 1.0:
            raise UserError(f"--overlap must be in [0, 1), not {speed['overlap']}")
        if speed["nmf_iters"] is not None and int(speed["nmf_iters"]) < 1:
            raise UserError(f"--nmf-iters must be at least 1, not {speed['nmf_iters']}")
        # the names any Factorizer layer can have, before any work; the model's own layers are checked
        # with the same rule once the model is known (Segmenter.prepare_models)
        check_layers(speed["skip_nmf"], self.component_layers, NMF_LAYERS)
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise UserError(f"--sw-batch-size must be at least 1, not {self.sw_batch_size}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise UserError(f"--threshold is a probability between 0 and 1 (exclusive), not {self.threshold}")
        if self.register in ("rigid", "affine") and self.task and not get_task(self.task).register_inputs:
            raise UserError(f"--register {self.register}: task {self.task!r} has no inputs from another session "
                            "to register (only ms-new registers its baseline onto the follow-up); leave --register "
                            "at auto")
        if self.min_lesion_mm3 is not None and self.min_lesion_mm3 < 0:
            raise UserError(f"--min-lesion-mm3 must be 0 or more, not {self.min_lesion_mm3}")
        return speed

    # -- the command line ---------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args) -> "SegmentSettings":
        """The settings of a parsed ``segment`` / ``batch`` command line (:func:`add_options`)."""
        given = {o.name: getattr(args, o.name) for o in OPTIONS}
        for o in LIST_OPTIONS:
            if o.listed:
                given[o.name] = split_list(given[o.name])
        given["components"] = given["components"] or bool(given["component_layers"])
        return cls(**given)

    def to_argv(self) -> List[str]:
        """Command-line arguments for these settings; defaults are left out."""
        argv: List[str] = []
        for o in OPTIONS:
            value = getattr(self, o.name)
            if value is None or (value == o.default and not o.off_flag):
                continue
            if o.kind is bool:
                if o.default is True:
                    argv += [] if value else [o.flag]
                else:
                    argv += [o.flag] if value else ([o.off_flag] if o.off_flag else [])
            elif o.repeat:
                for item in value:
                    argv += [o.flag, str(item)]
            elif o.listed:
                argv += [o.flag, ",".join(value)]
            else:
                argv += [o.flag, str(value)]
        return argv

    # -- JSON: report.json's "settings", the server's request ---------------------------------------
    @classmethod
    def from_json(cls, values: Mapping[str, Any], where: str = "setting ") -> "SegmentSettings":
        """Settings given as JSON (name → value; None: the default); each value's JSON type is checked
        (:class:`UserError` naming ``where`` the value is), names not settings are refused."""
        given: Dict[str, Any] = {}
        for key, value in values.items():
            o = BY_NAME.get(key)
            if o is None:
                raise UserError(f"{where}{key!r} is not a setting; settings are: {', '.join(BY_NAME)}")
            if value is None:
                continue
            if not _json_type_ok(o, value):
                kind = {bool: "true or false", "list": "a list of names", float: "a number"}.get(
                    "list" if o.repeat or o.listed else o.kind, o.kind.__name__)
                raise UserError(f"{where}{key} ({o.flag}) must be {kind}, not {value!r}")
            given[key] = value
        return cls(**given)

    def to_report(self, in_effect: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """report.json's ``settings``: every setting by its name but those the report records in their own
        entries (:data:`REPORTED_ELSEWHERE`); ``in_effect``: values a run resolved (the speed preset
        applied, the device it ran on, the window batch it chose) in place of the requested ones."""
        values = {k: v for k, v in self.values().items() if k not in REPORTED_ELSEWHERE}
        values.update({k: _plain(v) for k, v in (in_effect or {}).items() if k in values})
        return values

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> "SegmentSettings":
        """The settings of the run a report.json (parsed) records: its ``settings`` section, ``task`` and
        the ``models`` entries' paths. Keys of the section that are not settings (what the run
        measured: window plan, passes, …) are skipped; a setting of the wrong JSON type is refused.
        A report older than a setting lacks it: that setting keeps its default, except ``windows``
        (reports before window plans ran ``sliding``). Reports from before the section held every
        setting (no ``register`` in it) kept the register mode in ``registration.mode`` and under
        ``backend`` the backend that ran, not the setting (then the default)."""
        from LesionFactorizerLib.core.reportspec import view

        recorded = view(report)
        values = {k: v for k, v in (recorded.settings or {}).items() if k in BY_NAME and k not in REPORTED_ELSEWHERE}
        values.setdefault("windows", "sliding")
        if "register" not in values:
            values["register"] = recorded.registration_mode
            values.pop("backend", None)
        models = [m.get("path") if isinstance(m, dict) else m for m in recorded.models or [recorded.model]]
        values.update(task=recorded.task, models=[m for m in models if m is not None])
        return cls.from_json(values, "report.json settings ")

    def but(self, **changes: Any) -> "SegmentSettings":
        """These settings with ``changes``."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Option:
    """One setting as the command line spells it (derived from :class:`SegmentSettings`)."""

    name: str
    kind: Any                          # bool (an on/off switch), int, float or str (list items too)
    default: Any
    flag: str
    help: str
    choices: Tuple[str, ...]
    metavar: Optional[str]
    listed: bool                       # comma-separated list of names (LAYER,...)
    off_flag: str                      # the switch's "off" spelling (--no-tta)
    off_help: str
    repeat: bool                       # given once per value (--model A --model B)


def _kind(hint: Any) -> Any:
    """bool / int / float / str from a field's type (Optional[...] and Tuple[str, ...] unwrapped)."""
    if getattr(hint, "__origin__", None) is Union:
        hint = next(a for a in hint.__args__ if a is not type(None))
    return str if getattr(hint, "__origin__", None) is tuple else hint


_HINTS = get_type_hints(SegmentSettings)
OPTIONS: Tuple[Option, ...] = tuple(Option(f.name, _kind(_HINTS[f.name]), f.default, **f.metadata)
                                    for f in fields(SegmentSettings))
BY_NAME: Dict[str, Option] = {o.name: o for o in OPTIONS}
LIST_OPTIONS = tuple(o for o in OPTIONS if o.listed or o.repeat)   # values kept as tuples


def json_types(o: Option) -> Tuple[type, ...]:
    """The JSON types a setting's value may have (None: its default, always allowed)."""
    if o.listed or o.repeat:
        return (list,)
    return (int, float) if o.kind is float else (o.kind,)


def _json_type_ok(o: Option, value: Any) -> bool:
    if o.listed or o.repeat:
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if isinstance(value, bool):   # bool is an int to Python, never to JSON
        return o.kind is bool
    return isinstance(value, json_types(o))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def add_options(parser, names=None) -> None:
    """The settings (``names``: these only) as options of an ``argparse`` parser (``segment`` and
    ``batch``; ``counterfactual`` and ``demo`` take a few)."""
    for o in OPTIONS if names is None else [BY_NAME[n] for n in names]:
        if o.kind is bool:
            if o.default is True:      # an "off" switch: --no-overview stores False
                parser.add_argument(o.flag, dest=o.name, action="store_false", help=o.help)
                continue
            parser.add_argument(o.flag, dest=o.name, action="store_true",
                                default=None if o.off_flag else o.default, help=o.help)
            if o.off_flag:
                parser.add_argument(o.off_flag, dest=o.name, action="store_false", help=o.off_help)
            continue
        kwargs: Dict[str, Any] = {"dest": o.name, "help": o.help, "metavar": o.metavar}
        if o.repeat:
            kwargs.update(action="append", default=[])
        else:
            kwargs.update(type=o.kind, default=o.default)
        if o.choices:
            kwargs["choices"] = list(o.choices)
            kwargs.pop("metavar")
        parser.add_argument(o.flag, **kwargs)


def split_list(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def check_layers(skip_nmf, component_layers, layers) -> None:
    """``--skip-nmf`` and ``--component-layers`` name only NMF layers among ``layers``."""
    for flag, names in (("--skip-nmf", skip_nmf), ("--component-layers", component_layers)):
        unknown = [n for n in names or () if n not in layers]
        if unknown:
            raise UserError(f"unknown NMF layer(s) {', '.join(unknown)} in {flag}; layers are: {', '.join(layers)}")
