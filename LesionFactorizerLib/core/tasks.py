"""The segmentation tasks: what goes in, what comes out, and how raw network outputs become labels.

This is the one home for task knowledge (input names and order, label values, names, colours and
standard terminology, post-processing and metrics). It is pure Python on purpose: the Slicer GUI
process imports it to build its input selectors and colour tables without importing torch.

Terminology codes are SNOMED CT concepts (category *Morphologically Altered Structure*, region
*Brain*); the BraTS codes follow the labels used by MONAI Auto3DSeg's BraTS models in Slicer.
Slicer's "DICOM master list" lacks Infarct and Lesion under that category, so the entries name the
extension's own terminology context, which the Slicer module builds from these labels and loads at
start-up (LesionFactorizer/Resources/Terminology).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, fields
from typing import Iterable, Mapping, Optional

from LesionFactorizerLib.core.errors import UserError

# Terminology contexts a label's terminology entry string refers to: the extension's own category
# and type context (shipped with the Slicer module) and Slicer's built-in anatomic context.
SLICER_CATEGORY_CONTEXT = "Segmentation category and type - LesionFactorizer"
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

# Endings of the image files the library reads (SimpleITK), in one place for case-folder discovery,
# prediction/label matching and input name patterns. Compound endings come first so that
# ``x.seg.nrrd`` / ``x.nii.gz`` lose their whole ending.
IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Also stripped from names before pattern matching, but not image files to read on their own:
# single DICOM slices (a series is given as its folder) and compressed leftovers.
_NAME_ONLY_SUFFIXES = (".dcm", ".gz")


def image_suffix(path: str | os.PathLike) -> str:
    """The image-file ending of ``path`` (lower case), or "" when it is not an image file we read."""
    name = os.path.basename(os.fspath(path)).lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s) and len(name) > len(s)), "")


def is_image_file(path: str | os.PathLike) -> bool:
    return bool(image_suffix(path))


@dataclass(frozen=True)
class Code:
    """A coded concept: (code value, coding scheme designator, code meaning)."""

    value: str
    meaning: str
    scheme: str = "SCT"

    def slicer(self) -> str:
        """``SCT^52988006^Lesion``: the form Slicer's terminology entry strings use."""
        return f"{self.scheme}^{self.value}^{self.meaning}"

    def as_dict(self) -> dict[str, str]:
        return {"CodeValue": self.value, "CodingSchemeDesignator": self.scheme, "CodeMeaning": self.meaning}


MORPHOLOGICALLY_ALTERED = Code("49755003", "Morphologically Altered Structure")
BRAIN = Code("12738006", "Brain")
NECROSIS = Code("6574001", "Necrosis")
EDEMA = Code("79654002", "Edema")
NEOPLASM_PRIMARY = Code("86049000", "Neoplasm, Primary")
INFARCT = Code("55641003", "Infarct")
LESION = Code("52988006", "Lesion")


@dataclass(frozen=True)
class InputSpec:
    """One input image of a task.

    ``patterns`` are case-insensitive shell globs on the file (or DICOM folder) name without its
    extension; a pattern starting with ``!`` excludes (so ``t1`` can exclude ``t1ce`` files).
    """

    name: str
    title: str
    optional: bool = False
    patterns: tuple[str, ...] = ()
    hint: str = ""

    def matches(self, filename: str) -> bool:
        stem = file_stem(filename)
        include = [p for p in self.patterns if not p.startswith("!")]
        exclude = [p[1:] for p in self.patterns if p.startswith("!")]
        return any(fnmatch.fnmatchcase(stem, p) for p in include) and not any(
            fnmatch.fnmatchcase(stem, p) for p in exclude)


@dataclass(frozen=True)
class LabelSpec:
    """One output label value with its display name, colour and standard terminology."""

    value: int
    name: str          # short name used in tables and CSV columns, e.g. "ET"
    title: str         # readable name shown to users
    color: tuple[int, int, int]
    category: Code = MORPHOLOGICALLY_ALTERED
    type: Code = LESION
    region: Code | None = BRAIN

    def terminology_entry(self) -> str:
        """Serialised Slicer terminology entry:
        ``context~category~type~typeModifier~anatomicContext~region~regionModifier``."""
        region = self.region.slicer() if self.region else "^^"
        return "~".join([SLICER_CATEGORY_CONTEXT, self.category.slicer(), self.type.slicer(), "^^",
                         SLICER_ANATOMIC_CONTEXT, region, "^^"])

    def as_dict(self) -> dict:
        return {"value": self.value, "name": self.name, "title": self.title, "color": list(self.color),
                "category": self.category.as_dict(), "type": self.type.as_dict(),
                "region": self.region.as_dict() if self.region else None,
                "terminology": self.terminology_entry()}


@dataclass(frozen=True)
class RegionSpec:
    """A union of labels evaluated and reported together (BraTS ET ⊂ TC ⊂ WT)."""

    name: str
    title: str
    labels: tuple[int, ...]


@dataclass(frozen=True)
class PostProcessing:
    """How network outputs become labels.

    mode:
      - ``hierarchical``: nested regions thresholded in turn, WT, then TC inside WT, then ET
        inside TC (thesis 8.3.6), from one sigmoid channel per region or from softmax outputs.
      - ``threshold``: one sigmoid channel → label 1.
      - ``argmax``: the most probable label per voxel.
    ``thresholds``: per-region thresholds of the hierarchical rule (region name → probability);
    regions not named use ``threshold``. ``OutputSpec`` (core/outputspec.py) applies the rules.
    """

    mode: str
    threshold: float = 0.5
    min_lesion_mm3: float = 0.0
    connectivity: int = 26   # 6, 18 or 26: lesion = connected component with this neighbourhood
    thresholds: Optional[Mapping[str, float]] = None


POSTPROCESSING_MODES = ("hierarchical", "threshold", "argmax")
# What a model file's ``postprocessing`` may override (the same fields).
POSTPROCESSING_KEYS = tuple(f.name for f in fields(PostProcessing))


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    description: str
    inputs: tuple[InputSpec, ...]
    labels: tuple[LabelSpec, ...]
    postprocessing: PostProcessing
    metrics: tuple[str, ...]
    regions: tuple[RegionSpec, ...] = ()
    # Default output channel names, in order, for models of this task (a model file may override).
    output_channels: tuple[str, ...] = ()
    default_model: str = ""
    reference_input: str = ""   # the grid outputs are written on; defaults to the first input
    # inputs from another session, registered onto the reference input (pipeline/registration.py)
    register_inputs: tuple[str, ...] = ()

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def required_inputs(self) -> list[str]:
        return [i.name for i in self.inputs if not i.optional]

    @property
    def reference(self) -> str:
        return self.reference_input or self.inputs[0].name

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise UserError(f"task {self.name!r} has no input {name!r}; its inputs are: "
                        f"{', '.join(self.input_names)}")

    def label(self, value: int) -> LabelSpec:
        for spec in self.labels:
            if spec.value == value:
                return spec
        raise KeyError(value)

    def match_inputs(self, filenames: Iterable[str]) -> dict[str, str]:
        return match_inputs(filenames, self)

    def as_dict(self) -> dict:
        return {
            "name": self.name, "title": self.title, "description": self.description,
            "inputs": [{"name": i.name, "title": i.title, "optional": i.optional,
                        "patterns": list(i.patterns), "hint": i.hint} for i in self.inputs],
            "labels": [label.as_dict() for label in self.labels],
            "regions": [{"name": r.name, "title": r.title, "labels": list(r.labels)} for r in self.regions],
            "postprocessing": {"mode": self.postprocessing.mode, "threshold": self.postprocessing.threshold,
                               "min_lesion_mm3": self.postprocessing.min_lesion_mm3,
                               "connectivity": self.postprocessing.connectivity},
            "metrics": list(self.metrics), "output_channels": list(self.output_channels),
            "default_model": self.default_model, "reference_input": self.reference,
        }


def file_stem(path: str) -> str:
    """Lower-case file or folder name without image extensions (``Case1_T1ce.nii.gz`` → ``case1_t1ce``)."""
    name = os.path.basename(os.path.normpath(str(path))).lower()
    stripped = True
    while stripped:
        stripped = False
        for suffix in IMAGE_SUFFIXES + _NAME_ONLY_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                stripped = True
                break
    return name


def match_inputs(filenames: Iterable[str], task: Task | str) -> dict[str, str]:
    """Assign files to the task's inputs by name pattern; only unambiguous matches are returned.

    A file that matches several inputs, or an input that several files match, is left out rather
    than guessed: a wrong assignment (T1 fed as T1ce) silently ruins a segmentation, a missing one
    produces a clear "missing input" message.
    """
    task = get_task(task) if isinstance(task, str) else task
    files = list(filenames)
    hits = {f: [spec.name for spec in task.inputs if spec.matches(f)] for f in files}
    result: dict[str, str] = {}
    for spec in task.inputs:
        candidates = [f for f in files if hits[f] == [spec.name]]
        if len(candidates) == 1:
            result[spec.name] = candidates[0]
    return result


_BRATS_NEGATIVE_T1 = ("!*t1c*", "!*t1gd*", "!*t1_gd*", "!*t1ce*", "!*t1post*", "!*t1_post*", "!*contrast*",
                      "!*_ce_*", "!*gado*", "!*t1-ce*", "!*t1-c*")

TUMOR = Task(
    name="tumor",
    title="Brain tumour (glioma, BraTS)",
    description="Glioma sub-regions on pre-operative multi-parametric MRI (BraTS): necrotic / "
                "non-enhancing core, peritumoural edema and enhancing tumour.",
    inputs=(
        InputSpec("flair", "T2-FLAIR", patterns=("*flair*", "*t2f*", "*t2-f*", "*t2_f"), hint="3D T2-FLAIR"),
        InputSpec("t1", "T1 (native)", patterns=("*t1*", "*mprage*") + _BRATS_NEGATIVE_T1,
                  hint="3D T1-weighted before contrast"),
        InputSpec("t1ce", "T1 contrast-enhanced", patterns=(
            "*t1c*", "*t1gd*", "*t1_gd*", "*t1ce*", "*t1post*", "*t1_post*", "*t1-ce*", "*t1-c*",
            "*contrast*", "*gado*"), hint="3D T1-weighted after gadolinium"),
        InputSpec("t2", "T2", patterns=("*t2*", "!*flair*", "!*t2f*", "!*t2-f*", "!*t2_f"), hint="T2-weighted"),
    ),
    labels=(
        LabelSpec(1, "NCR", "Necrotic / non-enhancing tumour core", (230, 60, 60), type=NECROSIS),
        LabelSpec(2, "ED", "Peritumoural edema", (90, 200, 90), type=EDEMA),
        LabelSpec(3, "ET", "Enhancing tumour", (250, 220, 60), type=NEOPLASM_PRIMARY),
    ),
    regions=(
        RegionSpec("ET", "Enhancing tumour", (3,)),
        RegionSpec("TC", "Tumour core", (1, 3)),
        RegionSpec("WT", "Whole tumour", (1, 2, 3)),
    ),
    postprocessing=PostProcessing("hierarchical", threshold=0.5, connectivity=26),
    metrics=("dice", "hd95", "lesion_f1"),
    output_channels=("ET", "TC", "WT"),
    default_model="swin-factorizer-brats",
)

STROKE = Task(
    name="stroke",
    title="Ischemic stroke (ISLES'22)",
    description="Acute / sub-acute ischemic infarct on diffusion MRI (ISLES'22).",
    inputs=(
        InputSpec("dwi", "DWI (b=1000)", patterns=("*dwi*", "*trace*", "*b1000*", "*diffusion*", "!*adc*"),
                  hint="trace-weighted DWI, b=1000 s/mm²"),
        InputSpec("adc", "ADC", patterns=("*adc*",), hint="apparent diffusion coefficient map"),
        InputSpec("flair", "FLAIR", optional=True, patterns=("*flair*",), hint="optional T2-FLAIR"),
    ),
    labels=(LabelSpec(1, "infarct", "Ischemic infarct", (200, 70, 200), type=INFARCT),),
    postprocessing=PostProcessing("threshold", threshold=0.5, connectivity=26),
    metrics=("dice", "absolute_volume_difference", "lesion_f1", "absolute_lesion_count_difference"),
    output_channels=("infarct",),
    default_model="swin-factorizer-isles",
)

MS_NEW = Task(
    name="ms-new",
    title="New multiple-sclerosis lesions (MSSEG-2)",
    description="Lesions present on the follow-up FLAIR but not on the baseline FLAIR of the same "
                "patient; the baseline is registered onto the follow-up when they are misaligned (MSSEG-2).",
    inputs=(
        InputSpec("flair_baseline", "FLAIR baseline", patterns=(
            "*baseline*", "*time01*", "*time1", "*tp1*", "*before*", "*prior*"),
            hint="earlier 3D FLAIR"),
        InputSpec("flair_followup", "FLAIR follow-up", patterns=(
            "*follow*", "*time02*", "*time2", "*tp2*", "*after*", "*current*"),
            hint="later 3D FLAIR, same patient"),
    ),
    labels=(LabelSpec(1, "new_lesion", "New MS lesion", (255, 140, 0), type=LESION),),
    postprocessing=PostProcessing("threshold", threshold=0.5, min_lesion_mm3=3.0, connectivity=18),
    metrics=("dice", "lesion_f1", "lesion_detection_sensitivity", "false_positive_lesions"),
    output_channels=("new_lesion",),
    default_model="resunet-msseg2",
    reference_input="flair_followup",
    register_inputs=("flair_baseline",),
)

TASKS: dict[str, Task] = {t.name: t for t in (TUMOR, STROKE, MS_NEW)}


def get_task(name: str) -> Task:
    """The task called ``name``; a :class:`UserError` that lists the valid names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
