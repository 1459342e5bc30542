"""Offline training of LesionFactorizer models (installed as ``LesionFactorizerLib.training``).

Flat package: ``config`` (YAML → dataclasses), ``datasets`` (public data-set layouts → cases),
``folds``, ``preprocess`` (files → normalised arrays), ``augment`` (MONAI random transforms),
``data`` (Lightning data module), ``losses``, ``schedules``, ``module`` (Lightning module),
``checkpoint_io`` (pickle-free safetensors checkpoints), ``run`` (train / cross-validate) and
``export`` (checkpoint → model file). ``configs/`` holds one YAML per thesis experiment.

Lightning, MONAI transforms and torch are imported by the modules that need them only, so
``import LesionFactorizerLib.training`` stays cheap.
"""
