"""Torch-free, Slicer-free helpers of the LesionFactorizer Slicer module.

Everything the module does that does not need a Slicer object lives here, so that pytest can
exercise it on real files and real processes without Slicer: building the worker command line,
running the worker and parsing its JSON-lines progress, mapping report.json to table rows, input
auto-assignment and validation messages, terminology strings, component-map reading, the
dependency check, model cards, the model catalogue's rows and downloads, and sample-data discovery.
Nothing here imports torch or MONAI; only ``catalog_dialog`` (the Qt glue of "Get models…")
imports slicer and qt.
"""
