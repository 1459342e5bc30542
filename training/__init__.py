"""Offline training of LesionFactorizer models (installed as ``LesionFactorizerLib.training``).

Flat package: ``config`` (YAML → dataclasses), ``datasets`` (public data-set layouts → cases,
explicit label conversion), ``folds``, ``preprocess`` (files → normalised arrays), ``augment``
(MONAI random transforms), ``data`` (Lightning data module), ``targets`` (labels ↔ output
channels), ``losses``, ``schedules``, ``module`` (Lightning module), ``checkpoint_io``
(pickle-free safetensors checkpoints), ``run`` (train / cross-validate), ``export`` (checkpoint →
model file), ``cli_args`` (options shared by the train/cv commands), ``benchmark`` (training-step
speed and memory) and ``synthetic`` (tiny data sets in the public layouts, for tests).
``configs/`` holds one YAML per thesis experiment on top of one base per task.

Lightning, MONAI transforms and torch are imported by the modules that need them only, so
``import LesionFactorizerLib.training`` stays cheap.
"""
