"""k-fold cross-validation splits.

Reproduces the reference's split (MONAI ``CrossValidation(nfolds=5, seed=42)``): the case indices
in data-set order are shuffled once with ``numpy.random.RandomState(seed)`` and fold k is every
k-th shuffled index (``shuffled[k::n]``). If every case carries an explicit ``fold`` (datalist
column), those are used instead.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import numpy as np

from LesionFactorizerLib.core.errors import UserError

T = TypeVar("T")


def fold_indices(n_cases: int, n_folds: int = 5, seed: int = 42) -> list[list[int]]:
    if n_cases < n_folds:
        raise UserError(f"{n_cases} case(s) cannot be split into {n_folds} folds; use fewer folds (data.folds)")
    order = list(range(n_cases))
    np.random.RandomState(seed).shuffle(order)
    return [order[k::n_folds] for k in range(n_folds)]


def split(cases: Sequence[T], fold: int, n_folds: int = 5, seed: int = 42) -> tuple[list[T], list[T]]:
    """(training cases, validation cases) for ``fold``; training keeps data-set order."""
    if not 0 <= fold < n_folds:
        raise UserError(f"fold {fold} is out of range; folds are 0..{n_folds - 1}")
    explicit = [getattr(c, "fold", None) for c in cases]
    if all(f is not None for f in explicit):
        val_idx = {i for i, f in enumerate(explicit) if f == fold}
        if not val_idx:
            raise UserError(f"no case has fold == {fold} in the datalist's 'fold' column")
    elif any(f is not None for f in explicit):
        raise UserError("some cases have a 'fold' value and some do not; fill the column for every case or none")
    else:
        val_idx = set(fold_indices(len(cases), n_folds, seed)[fold])
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    val = [c for i, c in enumerate(cases) if i in val_idx]
    return train, val
