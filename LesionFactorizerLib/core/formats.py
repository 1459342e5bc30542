"""Output image formats: each format's name (the ``--format`` choices) and its file ending.

Torch-free and standard library only: the settings (``core/settings.FORMATS``), the writer
(``pipeline/io.py``) and the Slicer module's "Save to folder" all read the names from here.
"""

from __future__ import annotations

IMAGE_FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "nrrd": ".nrrd", "mha": ".mha", "seg.nrrd": ".seg.nrrd"}
# Formats that hold only a segmentation (labels with segment names, colours and terminology):
# the run's other images (probabilities) are written in the plain format named here.
LABEL_ONLY_FORMATS = {"seg.nrrd": "nrrd"}


def map_suffix(fmt: str) -> str:
    """File ending of the run's non-label images (probability maps) in output format ``fmt``."""
    return IMAGE_FORMATS[LABEL_ONLY_FORMATS.get(fmt, fmt)]
