"""Array type aliases and the argument checks every numeric entry point shares.

Every check raises ValueError naming the argument and the fix, so the servicer can map it to
INVALID_ARGUMENT with a message a person can act on.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray: TypeAlias = NDArray[np.float64]
ComplexArray: TypeAlias = NDArray[np.complex128]
IntArray: TypeAlias = NDArray[np.int64]
BoolArray: TypeAlias = NDArray[np.bool_]


def as_float_matrix(value: ArrayLike, name: str) -> FloatArray:
    """`value` as a finite 2-D float64 array; ValueError naming `name` otherwise."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x columns), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity; drop or impute those entries first")
    return array


def as_float_vector(value: ArrayLike, name: str, length: int | None = None) -> FloatArray:
    """`value` as a finite 1-D float64 array (of `length` if given); ValueError otherwise."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} must have length {length}, got {array.shape[0]}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity; pass finite values")
    return array


def require_positive(value: float, name: str) -> float:
    """`value` if it is finite and > 0; ValueError otherwise."""
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def require_in_range(value: float, name: str, low: float, high: float) -> float:
    """`value` if low <= value <= high; ValueError otherwise."""
    if not np.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return float(value)


def require_rank(value: int, name: str = "rank") -> int:
    """`value` if it is an integer >= 1; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def readonly(array: NDArray[Any]) -> NDArray[Any]:
    """`array` with its write flag cleared, so a frozen result cannot be changed in place."""
    array.setflags(write=False)
    return array


def wrap_phase(angles: NDArray[Any]) -> FloatArray:
    """Angles (rad) wrapped into (-pi, pi]."""
    wrapped = np.angle(np.exp(1j * np.asarray(angles, dtype=np.float64)))
    return np.asarray(wrapped, dtype=np.float64)
