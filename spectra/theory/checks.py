"""Argument checks the theory modules share (numpy only): one-line ValueErrors for bad input."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def positive(value: ArrayLike, name: str) -> np.ndarray:
    """`value` as a float64 array, refused unless it is non-empty, finite and positive."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{name} must be finite and positive")
    return arr
