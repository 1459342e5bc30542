"""The torch-free core: the facts and rules the Slicer GUI may import (tasks, model-file metadata,
label rule, run settings, speed presets, network presets as data, NMF layer names, checksums, the
user cache, errors).

The rule the folder states: a module here imports only the standard library and other modules of
this folder — never torch, numpy, SimpleITK, the pipeline or the networks — and runs on Python 3.9
(Slicer 5.8) as well. ``Testing/lib/test_core_torch_free.py`` and ``Testing/lib/test_import_graph.py`` (the
lowest layer) hold it to that.
"""
