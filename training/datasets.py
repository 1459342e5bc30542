"""Moved to :mod:`LesionFactorizerLib.datasets` (the library's ``evaluate`` command needs the
layouts too, and the library never imports ``training``). Re-exported here only so code written
against the old location keeps working; import from ``LesionFactorizerLib.datasets``."""

from LesionFactorizerLib.datasets import (  # noqa: F401
    ADAPTERS, BINARY, BRATS_2021_LABELS, BRATS_2023_LABELS, MSD_TASK01_LABELS, Case, ImageRef, convert_labels,
    datalist, discover, task_label_map)
