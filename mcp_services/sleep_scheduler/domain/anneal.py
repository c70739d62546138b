"""Simulated annealing and zero-temperature settling of binary concept states.

Dynamics: Glauber updates of ``s_i in {0, 1}`` with ``P(s_i = 1) = sigmoid(h_i / (T scale_i))``
where ``h_i`` is the local field and ``scale_i`` the field scale of
:meth:`ConceptGraph.field_scales`
(temperatures are relative to the normalised field). The temperature falls geometrically sweep by
sweep from ``t0``; once it is below ``t_floor`` sweeps are deterministic (``s_i = [h_i > 0]``, a
tie keeps the current state) and run until a whole sweep changes nothing. The number of sweeps is
the "settle loops" figure of the tuning rules.

Sweeps are sequential (exact asynchronous Glauber dynamics): each row's units are visited one at
a time in a fresh random order, and a unit that changes updates its neighbours' fields at once, so
at T = 0 every change lowers the energy and settling cannot cycle. Rows are independent and run in
a compiled per-row kernel (:mod:`.kernels`).

Only the *touched* concepts move: those active in a state, their graph neighbours and any concept
with a positive bias. Everything else has a field ``b_i <= 0`` from this state and stays off. A
concept that switches on brings its neighbours into the touched set, so completion walks as many
hops as it needs. A row costs its touched concepts times the sweeps plus, per change, the
changed concept's degree; the graph's N x N matrix is never densified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mcp_services.sleep_scheduler.domain.graph import ConceptGraph, FloatArray
from mcp_services.sleep_scheduler.domain.kernels import seed_from, settle_rows


@dataclass(frozen=True)
class AnnealSchedule:
    """How a batch of states is annealed.

    Args:
        t0: starting temperature relative to the normalised field (0 = settle at T = 0 only).
        decay: factor in (0, 1) applied to the temperature after each sweep.
        t_floor: temperatures below this are treated as zero (deterministic sweeps).
        max_sweeps: cap on sweeps (a 2-cycle or a huge t0 stops here, reported as unsettled).

    Raises:
        ValueError: if a value is out of range.
    """

    t0: float = 2.0
    decay: float = 0.85
    t_floor: float = 0.05
    max_sweeps: int = 200

    def __post_init__(self) -> None:
        if not self.t0 >= 0.0:
            raise ValueError(f"t0={self.t0} must be >= 0 (relative temperature)")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay={self.decay} must be in (0, 1), e.g. 0.85")
        if not self.t_floor > 0.0:
            raise ValueError(f"t_floor={self.t_floor} must be > 0, e.g. 0.05")
        if self.max_sweeps < 1:
            raise ValueError(f"max_sweeps={self.max_sweeps} must be >= 1")

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
    s.eliminate_zeros()
    s.sort_indices()
    sc = graph.field_scales() if scales is None else scales
    seed_from(rng)
    indptr, indices, sweeps, settled = settle_rows(
        graph.weights,
        graph.biases,
        sc,
        s,
        (schedule.t0, schedule.decay, schedule.t_floor, schedule.max_sweeps),
    )
    data = np.ones(len(indices), dtype=np.float64)
    return SettleResult(sp.csr_matrix((data, indices, indptr), shape=s.shape), sweeps, settled)
