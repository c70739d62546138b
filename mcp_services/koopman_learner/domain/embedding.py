"""Delay (Hankel) embedding and per-concept scaling: how a raw stream becomes DMD input.

**Why embed.** DMD of n concepts fits an n x n linear map; a single real series (n = 1) gives one
real eigenvalue, which cannot oscillate. Stacking the series with copies of itself shifted by
1 .. d - 1 samples (a Hankel matrix) gives a d-dimensional state in which a sinusoid is exactly a
conjugate pair of eigenvalues (Takens; "Hankel DMD", Arbabi & Mezic 2017). A trace of c concepts
and T samples becomes c * d rows and T - d + 1 columns; column j holds samples j .. j + d - 1.

**Automatic delays.** The rule of singular-spectrum analysis: a window of a third of the series
(Golyandina et al.: L between T/4 and T/2; T/3 keeps T - L + 1 >= 2L columns, so the fit stays
overdetermined), capped at `max_delays` to bound the rank. It spans two or more periods of any
cycle the data can resolve at least three times, which is what the frequency estimate needs: on the
real series of bench/bench_koopman_real.py, d = T/3 (24 .. 200) gives every annual period within
1.3%, d = 12 up to 50% off (the 6-month harmonic outranks the year); on the synthetic tones a cap
of 64 left a 57-sample tone 1.7% off, 200 within 0.7%.

**Scaling.** Strengths are defined on [0, 1] (0.5 marks an active concept). Raw measurements are
mapped there per concept by an affine map fitted once, on the stream's first batch, and kept: an
affine map changes no eigenvalue, so periods and growth rates are those of the raw series.

Plain numpy; every entry point raises ValueError naming the argument and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .arrays import FloatArray, as_float_matrix, require_rank

ScalingKind = Literal["none", "minmax", "robust"]
# Robust scaling maps these percentiles of the first batch to 0.1 and 0.9.
_ROBUST_PERCENTILES = (5.0, 95.0)
_ROBUST_TARGETS = (0.1, 0.9)


def lag_id(concept_id: str, lag: int) -> str:
    """The row name of `concept_id` `lag` samples earlier (lag 0 keeps the concept's own id)."""
    return concept_id if lag == 0 else f"{concept_id}@-{lag}"


def delay_embed(values: FloatArray, concept_ids: Sequence[str], delays: int) -> tuple[
    FloatArray, tuple[str, ...]
]:  # fmt: skip
    """The Hankel embedding of one trace and the names of its rows.

    Args:
        values: (c, T) samples in time order.
        concept_ids: the c row names.
        delays: d >= 1; 1 returns the trace as it is.

    Returns:
        ((c * d, T - d + 1) array, row names). Rows of concept i at lag k (k samples earlier than
        the column's newest sample) are named lag_id(concept_ids[i], k); lag 0 comes first.

    Raises:
        ValueError: on delays < 1, a trace with fewer than `delays` samples, or bad shapes.
    """
    require_rank(delays, "delays")
    array = as_float_matrix(values, "values")
    c, t = array.shape
    if c != len(concept_ids):
        raise ValueError(f"values has {c} rows but there are {len(concept_ids)} concept_ids")
    if delays == 1:
        return array, tuple(concept_ids)
    if t < delays:
        raise ValueError(
            f"a trace of {t} samples is shorter than delays={delays}; send longer traces or"
            " fewer delays"
        )
    columns = t - delays + 1
    rows = [array[:, delays - 1 - k : delays - 1 - k + columns] for k in range(delays)]
    out = np.ascontiguousarray(np.concatenate(rows, axis=0))
    ids = tuple(lag_id(cid, k) for k in range(delays) for cid in concept_ids)
    return out, ids


def auto_delays(n_samples: int, n_concepts: int, max_delays: int, max_rows: int) -> int:
    """Delays for a stream whose first trace has `n_samples` samples of `n_concepts` concepts.

    A third of the samples (see the module docstring), at most `max_delays`, and at most what
    keeps n_concepts * delays <= max_rows; 1 (no embedding) when that leaves fewer than 2.
    """
    d = min(n_samples // 3, max_delays, max_rows // max(n_concepts, 1))
    return d if d >= 2 else 1


@dataclass(frozen=True)
class Scaling:
    """strength = (value - offset) / scale per concept; kind "none" is the identity."""

    kind: ScalingKind
    concept_ids: tuple[str, ...] = ()
    offsets: tuple[float, ...] = ()
    scales: tuple[float, ...] = ()

    def apply(self, values: FloatArray, concept_ids: Sequence[str]) -> FloatArray:
        """`values` (rows named by `concept_ids`) scaled; concepts not fitted are unchanged."""
        if self.kind == "none":
            return values
        index = {cid: i for i, cid in enumerate(self.concept_ids)}
        out = np.array(values, dtype=np.float64)
        for row, cid in enumerate(concept_ids):
            i = index.get(cid)
            if i is not None:
                out[row] = (out[row] - self.offsets[i]) / self.scales[i]
        return out

    def extended(self, values: FloatArray, concept_ids: Sequence[str]) -> Scaling:
        """This scaling plus a fit for each of `concept_ids` it does not know yet."""
        if self.kind == "none":
            return self
        known = set(self.concept_ids)
        new = [(row, cid) for row, cid in enumerate(concept_ids) if cid not in known]
        if not new:
            return self
        fitted = [_fit(values[row], self.kind) for row, _ in new]
        return Scaling(
            self.kind,
            self.concept_ids + tuple(cid for _, cid in new),
            self.offsets + tuple(o for o, _ in fitted),
            self.scales + tuple(s for _, s in fitted),
        )


def _fit(row: FloatArray, kind: ScalingKind) -> tuple[float, float]:
    if kind == "minmax":
        low, high = float(np.min(row)), float(np.max(row))
        lo_target, hi_target = 0.0, 1.0
    else:
        low, high = (float(v) for v in np.percentile(row, _ROBUST_PERCENTILES))
        lo_target, hi_target = _ROBUST_TARGETS
    if not high > low:
        # A constant concept: shift it to the middle of the range, unit scale.
        return low - 0.5, 1.0
    scale = (high - low) / (hi_target - lo_target)
    return low - lo_target * scale, scale
