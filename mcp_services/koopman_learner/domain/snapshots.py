"""Time-ordered activation traces, the concepts a fit keeps, and the snapshot pairs DMD fits.

A *trace* is one uninterrupted, uniformly sampled recording: an array of shape
(n_concepts, n_snapshots) whose column t holds the activation strengths at time t * dt. Separate
traces are separate trajectories, so a pair (x_t, x_{t+1}) is only ever formed inside one trace:
the last snapshot of one trace never "evolves into" the first snapshot of the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .arrays import FloatArray, as_float_matrix, readonly

#: A concept is active (design section 2) when its strength exceeds this at least once.
DEFAULT_ACTIVE_THRESHOLD = 0.5


@dataclass(frozen=True, eq=False)
class SnapshotWindow:
    """Traces restricted to the active concepts, ready for a fit.

    `concept_ids[i]` names row i of every trace. Every trace has at least two snapshots, so
    each contributes at least one (x_t, x_{t+1}) pair.
    """

    concept_ids: tuple[str, ...]
    traces: tuple[FloatArray, ...]

    @property
    def n_concepts(self) -> int:
        """Rows of every trace."""
        return len(self.concept_ids)

    @property
    def n_pairs(self) -> int:
        """Snapshot pairs in all traces: sum of (snapshots - 1) per trace."""
        return sum(trace.shape[1] - 1 for trace in self.traces)

    @property
    def n_snapshots(self) -> int:
        """Snapshots in all traces."""
        return sum(trace.shape[1] for trace in self.traces)

    def pairs(self) -> tuple[FloatArray, FloatArray]:
        """(X, Y), each (n_concepts, n_pairs): Y[:, k] is the snapshot after X[:, k].

        Columns are ordered trace by trace; no column pair straddles two traces.
        """
        x = np.concatenate([trace[:, :-1] for trace in self.traces], axis=1)
        y = np.concatenate([trace[:, 1:] for trace in self.traces], axis=1)
        return x, y

    def pair_slices(self) -> tuple[slice, ...]:
        """For each trace, the columns of `pairs()` that came from it."""
        slices: list[slice] = []
        start = 0
        for trace in self.traces:
            stop = start + trace.shape[1] - 1
            slices.append(slice(start, stop))
            start = stop
        return tuple(slices)


def build_window(
    traces: Sequence[ArrayLike],
    concept_ids: Sequence[str],
    *,
    active_threshold: float = DEFAULT_ACTIVE_THRESHOLD,
) -> SnapshotWindow:
    """Validate traces and keep the rows of concepts that are active somewhere in them.

    Args:
        traces: arrays of shape (len(concept_ids), n_snapshots_k), columns in time order, one
            array per uninterrupted recording. Traces with a single snapshot carry no pair and
            are dropped.
        concept_ids: unique ids naming the rows.
        active_threshold: a concept is kept when its strength exceeds this in at least one
            snapshot of any trace (default 0.5, the design's "active"); pass a negative value to
            keep every concept.

    Raises:
        ValueError: on a non-finite or wrongly shaped trace, duplicate ids, or when no pair or no
            active concept remains.
    """
    ids = tuple(concept_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("concept_ids must be unique; merge the duplicate rows before fitting")
    if not ids:
        raise ValueError("concept_ids is empty; pass at least one concept")
    checked: list[FloatArray] = []
    for index, trace in enumerate(traces):
        array = as_float_matrix(trace, f"traces[{index}]")
        if array.shape[0] != len(ids):
            raise ValueError(
                f"traces[{index}] has {array.shape[0]} rows but there are {len(ids)} concept_ids;"
                " give one row per concept"
            )
        if array.shape[1] >= 2:
            checked.append(array)
    if not checked:
        raise ValueError("traces hold no snapshot pair; pass at least one trace with >= 2 columns")
    peak = np.max(np.stack([np.max(trace, axis=1) for trace in checked]), axis=0)
    keep = np.flatnonzero(peak > active_threshold)
    if keep.size == 0:
        raise ValueError(
            f"no concept exceeds active_threshold={active_threshold} in these traces;"
            " lower active_threshold or send traces with active concepts"
        )
    kept_ids = tuple(ids[i] for i in keep)
    kept = tuple(readonly(np.ascontiguousarray(trace[keep])) for trace in checked)
    return SnapshotWindow(concept_ids=kept_ids, traces=kept)
