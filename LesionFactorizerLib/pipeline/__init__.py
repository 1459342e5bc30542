"""The inference pipeline (docs/ARCHITECTURE.md): io → preprocessing → inference → postprocessing →
components → report, run stage by stage by :class:`LesionFactorizerLib.pipeline.segment.Segmenter`.

Importing this package is torch-free; torch loads inside the stages that need it.
"""
