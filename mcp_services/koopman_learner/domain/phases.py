"""Oscillator phases per concept: from phase fields the host sends, or from the activations.

Phases are unwrapped along time inside each trace (so finite differences see the true advance,
not a 2 pi jump) and never across traces: each trace stays a separate array.

Without phase fields, the phase of concept i is the argument of the analytic signal of its
demeaned activation series, a_i(t) - mean(a_i) + j H[a_i](t) (scipy.signal.hilbert). The Hilbert
transform assumes a narrow-band signal and is distorted near the ends of a finite record, so a
fraction of each end is trimmed; a concept whose series barely moves has no meaningful phase
and is reported as not oscillating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.signal
from numpy.typing import ArrayLike

from .arrays import BoolArray, FloatArray, as_float_matrix, readonly, require_in_range

DEFAULT_TRIM = 0.1
# An envelope below this share of the largest concept's has no usable phase.
_MIN_RELATIVE_ENVELOPE = 1e-3


@dataclass(frozen=True, eq=False)
class AnalyticPhases:
    """Phases estimated from activations.

    Attributes:
        phases: one (N, T_k') unwrapped array per input trace, ends trimmed.
        envelope: (N,) median analytic amplitude per concept (activation units).
        oscillating: (N,) True where the envelope is large enough for a phase to mean anything.
    """

    phases: tuple[FloatArray, ...]
    envelope: FloatArray
    oscillating: BoolArray


def phases_from_fields(traces: Sequence[ArrayLike]) -> tuple[FloatArray, ...]:
    """Unwrap given phase fields (rad), each trace (N, T_k) separately along time.

    Raises:
        ValueError: on non-finite or non-2-D traces, or traces with different row counts.
    """
    out = []
    rows: int | None = None
    for index, trace in enumerate(traces):
        array = as_float_matrix(trace, f"traces[{index}]")
        if rows is not None and array.shape[0] != rows:
            raise ValueError("every phase trace must have the same rows (one per concept)")
        rows = array.shape[0]
        out.append(readonly(np.unwrap(array, axis=1)))
    return tuple(out)


def phases_from_activations(
    traces: Sequence[ArrayLike], *, trim: float = DEFAULT_TRIM
) -> AnalyticPhases:
    """Phases from the analytic signal of each concept's activation series, per trace.

    Args:
        traces: activations (N, T_k) per uninterrupted trace, columns in time order.
        trim: fraction in [0, 0.45] of each trace dropped at each end (Hilbert edge effects).

    Raises:
        ValueError: on bad traces, or when trimming leaves fewer than 2 samples in a trace.
    """
    require_in_range(trim, "trim", 0.0, 0.45)
    phases = []
    envelopes = []
    for index, trace in enumerate(traces):
        array = as_float_matrix(trace, f"traces[{index}]")
        cut = int(np.floor(trim * array.shape[1]))
        if array.shape[1] - 2 * cut < 2:
            raise ValueError(
                f"traces[{index}] has {array.shape[1]} samples, too few after trimming"
                f" {trim:.0%} per end; send longer traces or lower trim"
            )
        analytic = scipy.signal.hilbert(array - array.mean(axis=1, keepdims=True), axis=1)
        kept = analytic[:, cut : array.shape[1] - cut]
        phases.append(readonly(np.unwrap(np.angle(kept), axis=1)))
        envelopes.append(np.abs(kept))
    envelope = np.median(np.concatenate(envelopes, axis=1), axis=1)
    oscillating = envelope > _MIN_RELATIVE_ENVELOPE * max(float(envelope.max()), 1e-300)
    return AnalyticPhases(
        phases=tuple(phases),
        envelope=readonly(np.asarray(envelope, dtype=np.float64)),
        oscillating=readonly(oscillating),
    )
