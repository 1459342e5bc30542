"""The inference pipeline (DESIGN.md §3): io → preprocessing → inference → postprocessing →
components → report, orchestrated by :func:`LesionFactorizerLib.pipeline.segment.segment_case`.

Importing this package is torch-free; torch loads inside the stages that need it.
"""
