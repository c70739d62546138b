"""Activation traces as the learner holds them, and how raw activity becomes one.

A :class:`Trace` is one uninterrupted recording sampled every dt seconds over the concepts it
mentions (a concept absent from a snapshot has strength 0 there). Two sources make traces:

* explicit traces (ProcessActivationBatch, or an episode whose frames form a trace): frames are
  used as they are when they already lie on the dt grid, else resampled onto it by linear
  interpolation (phases are unwrapped first, so interpolation follows the true advance);
* activation-only episodes: :class:`StreamAssembler` strings the episodes of one source
  (source type and id) into a stream in timestamp order; a gap longer than `max_gap_s`, or a
  step back in time, ends the stream, so separate sessions are never joined as one trajectory.

Plain Python and numpy: no gRPC here (codec.py converts protos into :class:`RawSnapshot`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mcp_services.koopman_learner.domain.arrays import FloatArray

# Frames within this share of dt of the grid are taken as on it (no resampling).
_GRID_TOLERANCE = 0.01
# A stream is handed to the learner once it holds this many raw snapshots; its last snapshot
# starts the next piece, so no pair is lost or joined across pieces.
STREAM_FLUSH_SNAPSHOTS = 64
# Sources whose streams are tracked at once; the stalest is flushed beyond it.
MAX_OPEN_STREAMS = 1024


@dataclass(frozen=True)
class RawSnapshot:
    """One validated activation: concept id -> strength in [0, 1], and phases (rad) if given."""

    time_s: float
    strengths: dict[str, float]
    phases: dict[str, float] | None = None


@dataclass(frozen=True, eq=False)
class Trace:
    """A uniformly sampled trajectory.

    Attributes:
        concept_ids: the concepts the trace mentions (row order).
        values: (k, T) strengths, column t at time t * dt.
        phases: (k, T) phases in rad, unwrapped along time, NaN where a snapshot gave none for
            the concept; None when no snapshot carried phases.
    """

    concept_ids: tuple[str, ...]
    values: FloatArray
    phases: FloatArray | None

    @property
    def n_snapshots(self) -> int:
        return int(self.values.shape[1])

    def dense(self, concept_ids: Sequence[str]) -> FloatArray:
        """Strengths over `concept_ids` (rows of concepts the trace lacks are 0)."""
        out = np.zeros((len(concept_ids), self.n_snapshots))
        row = {cid: i for i, cid in enumerate(self.concept_ids)}
        for j, cid in enumerate(concept_ids):
            i = row.get(cid)
            if i is not None:
                out[j] = self.values[i]
        return out

    def dense_phases(self, concept_ids: Sequence[str]) -> FloatArray | None:
        """Phases over `concept_ids`, or None unless every one of them has a full phase row."""
        if self.phases is None:
            return None
        row = {cid: i for i, cid in enumerate(self.concept_ids)}
        rows = [row.get(cid) for cid in concept_ids]
        if any(i is None for i in rows):
            return None
        out = self.phases[[i for i in rows if i is not None]]
        return None if bool(np.isnan(out).any()) else np.asarray(out, dtype=np.float64)


def trace_from_snapshots(snapshots: Sequence[RawSnapshot], dt: float) -> Trace | None:
    """A trace on the dt grid from time-ordered snapshots; None when it spans < 2 grid points.

    Snapshots exactly dt apart are kept as they are; otherwise every concept's series is
    linearly interpolated onto t0, t0 + dt, ... (phases after unwrapping along time).
    """
    if len(snapshots) < 2:
        return None
    ids = tuple(dict.fromkeys(cid for s in snapshots for cid in s.strengths))
    times = np.asarray([s.time_s for s in snapshots], dtype=np.float64)
    values = np.zeros((len(ids), len(snapshots)))
    row = {cid: i for i, cid in enumerate(ids)}
    has_phases = any(s.phases for s in snapshots)
    phases = np.full((len(ids), len(snapshots)), np.nan) if has_phases else None
    for t, snap in enumerate(snapshots):
        for cid, value in snap.strengths.items():
            values[row[cid], t] = value
        if phases is not None and snap.phases:
            for cid, phase in snap.phases.items():
                phases[row[cid], t] = phase
    steps = np.diff(times)
    if np.all(np.abs(steps - dt) <= _GRID_TOLERANCE * dt):
        grid_values, grid_phases = values, phases
    else:
        grid = times[0] + dt * np.arange(int(np.floor((times[-1] - times[0]) / dt + 1e-9)) + 1)
        if grid.size < 2:
            return None
        grid_values = np.stack([np.interp(grid, times, v) for v in values])
        grid_phases = None
        if phases is not None:
            grid_phases = np.stack([_interp_phase(grid, times, p) for p in phases])
    if grid_phases is not None:
        grid_phases = np.stack([_unwrap_finite(p) for p in grid_phases])
        if bool(np.isnan(grid_phases).all()):
            grid_phases = None
    return Trace(ids, np.ascontiguousarray(grid_values), grid_phases)


def _unwrap_finite(row: FloatArray) -> FloatArray:
    if bool(np.isnan(row).any()):
        return row
    return np.asarray(np.unwrap(row), dtype=np.float64)


def _interp_phase(grid: FloatArray, times: FloatArray, phase: FloatArray) -> FloatArray:
    # A phase missing anywhere leaves the concept without a phase field in this trace.
    if bool(np.isnan(phase).any()):
        return np.full(grid.shape, np.nan)
    return np.asarray(np.interp(grid, times, np.unwrap(phase)), dtype=np.float64)


@dataclass
class _Stream:
    snapshots: list[RawSnapshot] = field(default_factory=list)


class StreamAssembler:
    """Strings activation-only episodes of each source into traces.

    Not thread-safe; the learner's single worker owns it. `pending()` / `restore()` carry the
    open streams across restarts.
    """

    def __init__(self, dt: float, max_gap_s: float) -> None:
        self._dt = dt
        self._max_gap_s = max(max_gap_s, dt)
        self._streams: dict[str, _Stream] = {}

    @property
    def pending_snapshots(self) -> int:
        return sum(len(s.snapshots) for s in self._streams.values())

    def add(self, source: str, snapshot: RawSnapshot) -> list[Trace]:
        """Append one snapshot of `source`; returns the traces this completes (often none)."""
        done: list[Trace] = []
        stream = self._streams.pop(source, None) or _Stream()
        if stream.snapshots:
            gap = snapshot.time_s - stream.snapshots[-1].time_s
            if gap <= 0 or gap > self._max_gap_s:
                done += self._close(stream)
                stream = _Stream()
        stream.snapshots.append(snapshot)
        if len(stream.snapshots) >= STREAM_FLUSH_SNAPSHOTS:
            done += self._close(stream)
            stream = _Stream([snapshot])
        self._streams[source] = stream  # re-inserted last: dicts keep the stalest first
        while len(self._streams) > MAX_OPEN_STREAMS:
            stalest = next(iter(self._streams))
            done += self._close(self._streams.pop(stalest))
        return done

    def _close(self, stream: _Stream) -> list[Trace]:
        trace = trace_from_snapshots(stream.snapshots, self._dt)
        return [trace] if trace is not None else []

    def pending(self) -> list[tuple[str, list[RawSnapshot]]]:
        return [(source, list(s.snapshots)) for source, s in self._streams.items()]

    def restore(self, pending: Sequence[tuple[str, Sequence[RawSnapshot]]]) -> None:
        self._streams = {source: _Stream(list(snaps)) for source, snaps in pending}

    def clear(self) -> None:
        self._streams.clear()
