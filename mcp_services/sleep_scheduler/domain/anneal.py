"""Simulated annealing and zero-temperature settling of binary concept states.

Dynamics: Glauber updates of ``s_i in {0, 1}`` with ``P(s_i = 1) = sigmoid(h_i / (T scale_i))``
where ``h_i`` is the local field and ``scale_i`` the field scale of
:meth:`ConceptGraph.field_scales`
(temperatures are relative to the normalised field). The temperature falls geometrically sweep by
sweep from ``t0``; once it is below ``t_floor`` sweeps are deterministic (``s_i = [h_i > 0]``, a
tie keeps the current state) and run until a whole sweep changes nothing. The number of sweeps is
the "settle loops" figure of the tuning rules.

Sweeps are block-asynchronous: units are visited in a fresh random order in blocks of
``block_size``, and the fields are updated after every block. Fully sequential updates would be
exact but cost a Python step per unit; fully parallel ones can oscillate in 2-cycles with symmetric
weights. Small random blocks keep the energy descent of sequential updates in practice.

Only the *touched* concepts move: those active in a state, their graph neighbours and any concept
with a positive bias. Everything else has a field ``b_i <= 0`` from this state and stays off. After
settling, the touched set is recomputed from the new states and settling continues until it is
closed, so completion can walk more than one hop. Inside the touched set the work is done on a
dense (|U|, |U|) block when ``|U| <= DENSE_BLOCK_LIMIT`` (cheap BLAS), else on a CSR block; the
graph's full N x N matrix is never densified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.special import expit

from mcp_services.sleep_scheduler.domain.graph import ConceptGraph, FloatArray

DENSE_BLOCK_LIMIT = 2048
"""Touched sets up to this size are worked on as a dense block (2048^2 float64 = 32 MiB)."""

_MAX_EXPANSIONS = 4


@dataclass(frozen=True)
class AnnealSchedule:
    """How a batch of states is annealed.

    Args:
        t0: starting temperature relative to the normalised field (0 = settle at T = 0 only).
        decay: factor in (0, 1) applied to the temperature after each sweep.
        t_floor: temperatures below this are treated as zero (deterministic sweeps).
        max_sweeps: cap on sweeps (a 2-cycle or a huge t0 stops here, reported as unsettled).
        block_size: units updated together in one asynchronous step.

    Raises:
        ValueError: if a value is out of range.
    """

    t0: float = 2.0
    decay: float = 0.85
    t_floor: float = 0.05
    max_sweeps: int = 200
    block_size: int = 32

    def __post_init__(self) -> None:
        if not self.t0 >= 0.0:
            raise ValueError(f"t0={self.t0} must be >= 0 (relative temperature)")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay={self.decay} must be in (0, 1), e.g. 0.85")
        if not self.t_floor > 0.0:
            raise ValueError(f"t_floor={self.t_floor} must be > 0, e.g. 0.05")
        if self.max_sweeps < 1:
            raise ValueError(f"max_sweeps={self.max_sweeps} must be >= 1")
        if self.block_size < 1:
            raise ValueError(f"block_size={self.block_size} must be >= 1")

    @classmethod
    def zero(cls, max_sweeps: int = 200) -> AnnealSchedule:
        """Deterministic settling at T = 0 (recall and completion)."""
        return cls(t0=0.0, max_sweeps=max_sweeps)


@dataclass(frozen=True)
class SettleResult:
    """States after annealing.

    Attributes:
        states: (B, N) CSR {0, 1} states over the graph's index.
        sweeps: sweeps run ("settle loops"), including the annealing ones.
        settled: False when ``max_sweeps`` was hit before a sweep changed nothing.
    """

    states: sp.csr_matrix
    sweeps: int
    settled: bool


class WorkingBlock:
    """The graph restricted to a touched set ``units`` (global positions, sorted)."""

    def __init__(self, graph: ConceptGraph, units: NDArray[np.int64], scales: FloatArray) -> None:
        self.units = units
        w = graph.weights[units][:, units]
        self.dense = len(units) <= DENSE_BLOCK_LIMIT
        self.w_dense: FloatArray | None = np.asarray(w.toarray()) if self.dense else None
        self.w_sparse: sp.csr_matrix = sp.csr_matrix(w)
        self.biases: FloatArray = graph.biases[units]
        self.scales: FloatArray = scales[units]

    @property
    def size(self) -> int:
        return len(self.units)

    def fields(self, x: FloatArray) -> FloatArray:
        """Fields (B, |U|) of local dense states ``x`` (B, |U|)."""
        if self.w_dense is not None:
            return np.asarray(x @ self.w_dense) + self.biases
        return np.asarray((sp.csr_matrix(x) @ self.w_sparse).toarray()) + self.biases

    def add_changes(
        self, h: FloatArray, rows: NDArray[np.int64], d: FloatArray, cols: NDArray[np.int64]
    ) -> None:
        """``h[rows] += d @ W[cols, :]`` for a state change ``d`` (len(rows), len(cols))."""
        if self.w_dense is not None:
            h[rows] += d @ self.w_dense[cols]
        else:
            h[rows] += (sp.csr_matrix(d) @ self.w_sparse[cols]).toarray()


def touched_units(graph: ConceptGraph, states: sp.csr_matrix) -> NDArray[np.int64]:
    """Sorted positions of active concepts in ``states``, their neighbours, positive-bias ones."""
    active = np.unique(states.indices)
    neighbours = np.unique(graph.weights[active].indices) if active.size else active
    positive = np.flatnonzero(graph.biases > 0)
    return np.union1d(np.union1d(active, neighbours), positive).astype(np.int64)


def run_sweeps(
    block: WorkingBlock,
    x: FloatArray,
    schedule: AnnealSchedule,
    rng: np.random.Generator,
    t_start: float | None = None,
) -> tuple[int, bool]:
    """Anneal local dense states ``x`` (B, |U|) in place; returns (sweeps, settled)."""
    n = block.size
    if n == 0 or x.shape[0] == 0:
        return 0, True
    h = block.fields(x)
    t = schedule.t0 if t_start is None else t_start
    bs = schedule.block_size
    for sweep in range(1, schedule.max_sweeps + 1):
        hot = t >= schedule.t_floor
        changed = False
        order = rng.permutation(n)
        for start in range(0, n, bs):
            cols = order[start : start + bs]
            hc = h[:, cols]
            old = x[:, cols]
            if hot:
                p = expit(hc / (t * block.scales[cols]))
                new = (rng.random(hc.shape) < p).astype(np.float64)
            else:
                new = np.where(hc > 0, 1.0, np.where(hc < 0, 0.0, old))
            d = new - old
            rows = np.flatnonzero(np.any(d != 0.0, axis=1))
            if rows.size:
                changed = True
                x[:, cols] = new
                block.add_changes(h, rows, d[rows], cols)
        if not hot and not changed:
            return sweep, True
        t = t * schedule.decay if hot else 0.0
    return schedule.max_sweeps, False


def settle(
    graph: ConceptGraph,
    states: sp.spmatrix | sp.sparray,
    schedule: AnnealSchedule,
    rng: np.random.Generator,
    scales: FloatArray | None = None,
) -> SettleResult:
    """Anneal each row of ``states`` (B, N) {0, 1} from ``schedule.t0`` until it stops changing.

    Args:
        graph: the energy model.
        states: starting states over ``graph.index``.
        schedule: temperatures and caps.
        rng: source of the visiting order and of thermal noise.
        scales: precomputed :meth:`ConceptGraph.field_scales` (recomputed when None).

    Raises:
        ValueError: if ``states`` has the wrong number of columns.
    """
    s = sp.csr_matrix(states).astype(np.float64)  # type: ignore[call-overload]
    if s.shape[1] != graph.size:
        raise ValueError(f"states have {s.shape[1]} columns: expected {graph.size} (index size)")
    sc = graph.field_scales() if scales is None else scales
    units = touched_units(graph, s)
    if len(units) > DENSE_BLOCK_LIMIT and s.shape[0] > 1:
        # Unrelated cues share few concepts: halve the batch until each half's touched set
        # fits a dense block, instead of carrying a (B, |U|) field matrix that is mostly idle.
        half = s.shape[0] // 2
        a = settle(graph, s[:half], schedule, rng, sc)
        b = settle(graph, s[half:], schedule, rng, sc)
        return SettleResult(
            sp.vstack([a.states, b.states], format="csr"),
            max(a.sweeps, b.sweeps),
            a.settled and b.settled,
        )
    total = 0
    settled = False
    t_start: float | None = None
    for _ in range(_MAX_EXPANSIONS):
        block = WorkingBlock(graph, units, sc)
        x = np.asarray(s[:, units].toarray())
        sweeps, settled = (
            run_sweeps(block, x, schedule, rng, t_start)
            if total < schedule.max_sweeps
            else (0, False)
        )
        total += sweeps
        s = _scatter(x, units, s.shape)
        grown = touched_units(graph, s)
        if not settled or np.setdiff1d(grown, units).size == 0:
            break
        # New actives reach concepts outside the block: continue at T = 0 on the larger set.
        units, t_start = grown, 0.0
    return SettleResult(s, min(total, schedule.max_sweeps), settled)


def _scatter(x: FloatArray, units: NDArray[np.int64], shape: tuple[int, int]) -> sp.csr_matrix:
    rows, cols = np.nonzero(x > 0.5)
    data = np.ones(len(rows), dtype=np.float64)
    return sp.csr_matrix((data, (rows, units[cols])), shape=shape)
