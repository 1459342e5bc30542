"""Offline training of LesionFactorizer models (installed as ``LesionFactorizerLib.training``).

Flat package: ``config`` (YAML → dataclasses), ``folds``, ``preprocess`` (files → normalised arrays), ``augment``
(MONAI random transforms), ``data`` (Lightning data module), ``targets`` (labels ↔ output
channels), ``losses``, ``schedules``, ``module`` (Lightning module), ``checkpoint_io``
(pickle-free safetensors checkpoints), ``run`` (train / cross-validate), ``export`` (checkpoint →
model file), ``cli_args`` (options shared by the train/cv commands), ``benchmark`` (training-step
speed and memory) and ``synthetic`` (tiny data sets in the public layouts, for tests).
Data-set layouts, label conversion and datalists live in the library
(``LesionFactorizerLib.datasets`` / ``.datalist``) because ``evaluate`` and the phantom writer use
them too. ``packed`` stores a fold split's preprocessed cases in one file, a data source of the
same trainer for a host without the raw data or SimpleITK; ``demo_models.py`` (a script) rebuilds
the bundled demo models.
``configs/`` holds one YAML per thesis experiment on top of one base per task.

Lightning, MONAI transforms and torch are imported by the modules that need them only, so
``import LesionFactorizerLib.training`` stays cheap.
"""
