"""The segment settings: one definition of every option a segmentation run takes.

From :data:`OPTIONS` come the ``segment`` / ``batch`` command-line options (:func:`add_options`),
the worker's argument list that the Slicer module launches (:func:`to_argv`), and the one check of
their values (:func:`check`), used by the library's run and by the Slicer module before it starts
a worker. The Slicer module's keyword arguments are the option names.

Pure Python (3.9+), torch-free: the Slicer GUI process imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from LesionFactorizerLib.errors import UserError
from LesionFactorizerLib.nn.layout import NMF_LAYERS
from LesionFactorizerLib.pipeline.speed_presets import DEFAULT_SPEED_PRESET, SPEED_PRESET_HELP, SPEED_PRESETS, WINDOW_PLANS

DEVICES = ("auto", "cpu", "cuda", "mps")
FORMATS = ("nii.gz", "nii", "nrrd", "mha", "seg.nrrd")   # keys of pipeline.io.IMAGE_FORMATS (a test checks)
PROGRESS = ("bar", "jsonl", "none")
# ms-new: register the baseline onto the follow-up (pipeline/registration.py says how)
REGISTER_MODES = ("auto", "rigid", "affine", "never")
BACKENDS = ("auto", "eager", "compile", "onnx")   # pipeline.backends runs them
POSTPROCESS = ("hierarchical", "argmax")          # outputspec.OutputSpec decodes by them


@dataclass(frozen=True)
class Option:
    name: str                          # SegmentOptions field and Slicer keyword argument
    flag: str                          # on the command line
    help: str
    type: Optional[type] = None        # None: an on/off switch
    default: Any = None
    choices: Tuple[str, ...] = ()
    metavar: Optional[str] = None
    listed: bool = False               # comma-separated list of names (LAYER,...)
    off_flag: str = ""                 # the switch's "off" spelling (--no-tta)
    off_help: str = ""
    repeat: bool = False               # given once per value (--model A --model B)


OPTIONS: Tuple[Option, ...] = (
    Option("task", "--task", "tumor, stroke or ms-new (default: the model's task)", str),
    Option("models", "--model", "model name or .safetensors path; repeat for an ensemble (mean of logits; under the hierarchical "
           "rule mean of probabilities, thesis 8.3.6); "
           "default: the task's default model", str, (), metavar="NAME|PATH", repeat=True),
    Option("device", "--device", "auto picks CUDA, then MPS, then CPU; CUDA out-of-memory falls back to CPU",
           str, "auto", DEVICES),
    Option("preset", "--preset", SPEED_PRESET_HELP, str, DEFAULT_SPEED_PRESET, tuple(SPEED_PRESETS)),
    Option("tta", "--tta", "mirror test-time augmentation", off_flag="--no-tta",
           off_help="disable TTA (overrides --preset)"),
    Option("nmf_iters", "--nmf-iters", "NMF (HALS) iterations at inference", int, metavar="N"),
    Option("skip_nmf", "--skip-nmf", f"short-circuit these NMF layers, NMF(X) := X as in thesis 7.4.5 "
           f"({', '.join(NMF_LAYERS)})", str,
           metavar="LAYER,...", listed=True),
    Option("overlap", "--overlap", "sliding-window overlap (default from --preset, 0.5)", float),
    Option("windows", "--windows", "window plan: sliding (windows of the trained patch size at --overlap) or whole "
           "(the fewest windows that fit memory, the whole foreground box in one where it fits; window-local "
           "networks only, others keep sliding); default from --preset", str, choices=WINDOW_PLANS),
    Option("sw_batch_size", "--sw-batch-size", "windows per forward pass (default: chosen from the window size "
           "and free memory; the result is the same either way)", int, metavar="N"),
    Option("backend", "--backend", "how the network runs: auto (the backend measured fastest on this machine, "
           "else eager), eager (PyTorch), compile (torch.compile; first run compiles, then cached) or onnx "
           "(ONNX Runtime, needs the export extra)", str, "auto", BACKENDS),
    Option("components", "--components", "write NMF component maps (Factorizer models)", default=False),
    Option("component_layers", "--component-layers", "write only these layers' components (implies --components)",
           str, metavar="LAYER,...", listed=True),
    Option("effects", "--effects", "also rank every NMF component by its effect on the lesion: the labels with "
           "that component dropped, as `counterfactual` gives them (implies --components; costs the layers downstream "
           "of each NMF layer once per component)", default=False),
    Option("probabilities", "--probabilities", "also write probability maps", default=False),
    Option("uncertainty", "--uncertainty", "also write uncertainty.<ext>: voxel-wise predictive entropy (bits) "
           "of the lesion/background decision, on the segmentation's grid", default=False),
    Option("threshold", "--threshold", "probability threshold (default: task/model)", float),
    Option("postprocess", "--postprocess", "tumor: how probabilities become labels. hierarchical (thesis 8.3.6): "
           "whole tumour by threshold, tumour core thresholded inside it, enhancing vs necrosis inside the core, "
           "with the model's per-region thresholds; argmax: the most probable label per voxel (default: the model's)",
           str, None, POSTPROCESS),
    Option("min_lesion_mm3", "--min-lesion-mm3", "remove smaller lesions (default: task; ms-new 3)", float),
    Option("register", "--register", "ms-new: put the baseline FLAIR on the follow-up. auto checks the pair and "
           "registers it rigidly when misaligned; rigid / affine always register; never only warns when the pair "
           "looks misaligned", str, "auto", REGISTER_MODES),
    Option("format", "--format", "image format of the outputs; seg.nrrd: Slicer's segmentation file (segment names, "
           "colours, terminology; needs slicerio), probability maps then as .nrrd", str, "nii.gz", FORMATS),
    Option("dicom_seg", "--dicom-seg", "also write segmentation.dcm, a DICOM Segmentation object referencing the "
           "reference input's DICOM series (give that input as a DICOM series folder; needs highdicom)",
           default=False),
    Option("overview", "--no-overview", "skip overview.png", default=True),
    Option("progress", "--progress", "bar (stderr), jsonl (one JSON event per line on stdout) or none",
           str, "bar", PROGRESS),
    Option("overwrite", "--overwrite", "replace existing results in the output folder", default=False),
)
BY_NAME: Dict[str, Option] = {o.name: o for o in OPTIONS}


def add_options(parser) -> None:
    """The options on an ``argparse`` parser (``segment`` and ``batch``)."""
    for o in OPTIONS:
        if o.type is None:
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
            kwargs.update(type=o.type, default=o.default)
        if o.choices:
            kwargs["choices"] = list(o.choices)
            kwargs.pop("metavar")
        parser.add_argument(o.flag, **kwargs)


def split_list(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def to_argv(values: Mapping[str, Any]) -> List[str]:
    """Command-line arguments for ``values`` (option name → value); defaults are left out."""
    argv: List[str] = []
    for name, value in values.items():
        o = BY_NAME[name]
        if value is None or (value == o.default and not o.off_flag):
            continue
        if o.type is None:
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


def check(values: Mapping[str, Any]) -> Dict[str, Any]:
    """The one check of a run's settings; returns the speed settings in effect (the preset with
    the given tta / nmf_iters / skip_nmf / overlap on top). Raises :class:`UserError`."""
    for name in ("device", "preset", "format", "progress", "register", "backend", "postprocess", "windows"):
        value = values.get(name)
        if value is not None and value not in BY_NAME[name].choices:
            raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(BY_NAME[name].choices)}")
    speed = dict(SPEED_PRESETS[values.get("preset") or DEFAULT_SPEED_PRESET])
    for key in ("tta", "nmf_iters", "skip_nmf", "overlap", "windows"):
        if values.get(key) is not None:
            speed[key] = values[key]
    if not 0.0 <= speed["overlap"] < 1.0:
        raise UserError(f"--overlap must be in [0, 1), not {speed['overlap']}")
    if speed["nmf_iters"] is not None and int(speed["nmf_iters"]) < 1:
        raise UserError(f"--nmf-iters must be at least 1, not {speed['nmf_iters']}")
    # the names any Factorizer layer can have, before any work; the model's own layers are checked
    # with the same rule once the model is known (Segmenter.prepare_models)
    check_layers(speed["skip_nmf"], values.get("component_layers"), NMF_LAYERS)
    if values.get("sw_batch_size") is not None and values["sw_batch_size"] < 1:
        raise UserError(f"--sw-batch-size must be at least 1, not {values['sw_batch_size']}")
    threshold = values.get("threshold")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise UserError(f"--threshold is a probability between 0 and 1 (exclusive), not {threshold}")
    register, task = values.get("register"), values.get("task")
    if register in ("rigid", "affine") and task:
        from LesionFactorizerLib.tasks import get_task

        if not get_task(task).register_inputs:
            raise UserError(f"--register {register}: task {task!r} has no inputs from another session to register "
                            "(only ms-new registers its baseline onto the follow-up); leave --register at auto")
    min_mm3 = values.get("min_lesion_mm3")
    if min_mm3 is not None and min_mm3 < 0:
        raise UserError(f"--min-lesion-mm3 must be 0 or more, not {min_mm3}")
    return speed


def check_layers(skip_nmf: Optional[List[str]], component_layers: Optional[List[str]], layers) -> None:
    """``--skip-nmf`` and ``--component-layers`` name only NMF layers among ``layers``."""
    for flag, names in (("--skip-nmf", skip_nmf), ("--component-layers", component_layers)):
        unknown = [n for n in names or () if n not in layers]
        if unknown:
            raise UserError(f"unknown NMF layer(s) {', '.join(unknown)} in {flag}; layers are: {', '.join(layers)}")
