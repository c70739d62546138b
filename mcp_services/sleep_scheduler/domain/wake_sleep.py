"""One sleep epoch of the wake-sleep ("dreaming") update on replayed prototypes.

The design's rule is ``W += eta (<s s^T>_wake - <s s^T>_sleep)`` (b likewise). Estimating the
sleep term by free-running a Boltzmann machine to equilibrium is slow, and contrasting replayed
patterns with the *attractors* they anneal into learns poorly once the load passes the Hebbian
limit (the attractors are far-away spurious states; see bench/bench_capacity.py's ``wake_sleep``
baseline). This module uses the single-site (pseudo-likelihood) estimate of the sleep term
instead: every replay is corrupted (``replay_noise`` of its active concepts swapped for others, as
a noisy episode would be), and each concept's sleep state is sampled from its conditional
``sigmoid(h_i / (T scale_i))`` given the rest of the corrupted replay. With ``xi`` the clean
prototype, ``c`` the corrupted replay and ``s_hat`` the sleep response, the centred statistics are

    wake:  1/2 (xi (c - mu)^T + (c - mu) xi^T)      sleep: same with s_hat for xi

so ``dW = eta/2 (e (c - mu)^T + (c - mu) e^T)`` with ``e = xi - s_hat``, and ``db = eta e`` in the
centred parametrisation (``mu`` = mean activity of the replays, which conditions the {0, 1}
model like a ±1 one; converted back to plain ``b`` with ``- dW mu``). This is the gradient of the
pseudo-likelihood of the clean replays given noisy neighbours: it stops changing a concept once
the concept is stable with a margin against the noise (perceptron-like, "training with noise"),
which is what makes capacity reach well past Hebbian's 0.138 N. At high temperature the
responses are ~uniform and the update is Hebbian; the caller anneals T across epochs.

Which concepts a replay's pseudo-likelihood covers: its prototype, the replay itself, their
neighbours on the support and the positive-bias concepts, i.e. every concept whose field the
replay moves or that would switch on by itself; the rest have ``h = b <= 0`` and are left out.
This set is per replay, so batching changes nothing.

**Step per parameter.** Each weight and bias moves by ``eta`` times its *mean* error over the
replays that touched it (the replay weight behind each entry of the gradient), not by the
gradient averaged over all K replays. With dense patterns every replay touches every concept,
so this is the plain rule up to a factor ~2 on the weights. With sparse assemblies it is what
keeps a cycle's learning independent of K: a concept in m assemblies of k members is touched by
about ``m k`` replays (as a member or a neighbour of one), a weight between two co-members by
about ``m`` (those with one end active), and m grows with the load. Averaged over all replays,
the bias collected ``m (k - 1)`` "you should be off" errors per epoch while a weight got one
"co-active" error worth ``1/K``: at 10k episodes of 20 over 10k concepts the biases outran the
weights and 10 epochs recalled nothing (an empty graph was kept), at 100k nothing was learned in
25 epochs. With per-parameter means, 1k, 10k and 100k episodes all recall >= 0.95 by about the
tenth epoch (bench/bench_cycle.py).

Sparsity: the update lives on a support fixed for the cycle, the existing edges plus the pairs
co-active in a prototype. Concepts swapped in by the replay noise get no new edges: their own
negative bias already rejects them, and edges to every random stray would make the graph dense.
The centring term ``-e mu^T`` is applied on that support only. An epoch costs the sum over
replays of (active concepts x their support degree): see :mod:`.kernels`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.domain.graph import ConceptGraph, FloatArray, scales_of
from mcp_services.sleep_scheduler.domain.kernels import (
    Indices,
    apply_update,
    epoch_statistics,
    on_support,
    row_sq,
    seed_from,
    transpose_positions,
)

_ERROR_FLOOR = 1e-3
"""Errors below this are dropped: far-off concepts would add dense, useless dust to W."""

_STRAY_FLOOR = 0.05
"""Error a concept outside the replay and its prototype needs before it counts."""


def swap_noise(
    states: sp.csr_matrix, fraction: float, pool: NDArray[np.int64], rng: np.random.Generator
) -> sp.csr_matrix:
    """Each row with ``round(fraction * active)`` active concepts swapped for inactive pool ones.

    For a dense ±1 pattern mapped to {0, 1} (half active) this flips ``fraction`` of all N
    concepts on average; for a sparse assembly it keeps the activity level.
    """
    rows: list[NDArray[np.int64]] = []
    indptr = [0]
    for i in range(states.shape[0]):
        active = states.indices[states.indptr[i] : states.indptr[i + 1]].astype(np.int64)
        k = min(round(fraction * len(active)), len(active))
        if k:
            off = rng.choice(len(active), size=k, replace=False)
            on = _draw_outside(pool, active, k, rng)
            active = np.concatenate([np.delete(active, off), on])
        rows.append(np.sort(active))
        indptr.append(indptr[-1] + len(active))
    idx = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(idx)), idx, np.asarray(indptr)), shape=states.shape)


def _draw_outside(
    pool: NDArray[np.int64], active: NDArray[np.int64], k: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Up to ``k`` distinct pool members not in ``active``, uniformly at random."""
    # Rejection sampling: a row is small next to the pool, so a few draws suffice and the cost
    # does not grow with the pool (a set difference per row would).
    draws = pool[rng.integers(0, len(pool), size=4 * k + 8)] if len(pool) else pool
    draws = draws[~np.isin(draws, active)]
    _, first = np.unique(draws, return_index=True)
    picked = draws[np.sort(first)][:k]
    if len(picked) < k:
        free = np.setdiff1d(pool, active)
        picked = rng.choice(free, size=min(k, len(free)), replace=False)
    return picked.astype(np.int64)


class SleepLearner:
    """The wake-sleep learning state of one cycle: weights on a fixed support, and biases.

    Args:
        graph: the starting graph (its weights and biases; its index is kept).
        replays: (K, N) CSR {0, 1} clean prototypes, replayed every epoch.
        replay_weights: (K,) non-negative weights (default 1), normalised to sum to one.
        replay_noise: fraction in [0, 1) of each replay's active concepts swapped per epoch.

    Raises:
        ValueError: if ``replay_noise`` is outside [0, 1) or the shapes disagree.
    """

    def __init__(
        self,
        graph: ConceptGraph,
        replays: sp.csr_matrix,
        replay_weights: FloatArray | None = None,
        replay_noise: float = 0.1,
    ) -> None:
        if not 0.0 <= replay_noise < 1.0:
            raise ValueError(f"replay_noise={replay_noise} must be in [0, 1), e.g. 0.1")
        k, n = replays.shape
        if n != graph.size:
            raise ValueError(f"replays have {n} columns: expected {graph.size} (index size)")
        x = sp.csr_matrix(replays, dtype=np.float64)
        x.sort_indices()
        rw = np.ones(k) if replay_weights is None else np.asarray(replay_weights, dtype=np.float64)
        if rw.shape != (k,) or np.any(rw < 0):
            raise ValueError(f"replay_weights must be {k} non-negative numbers, one per replay")
        self._rw = rw / max(float(rw.sum()), 1e-300)
        self._mu = np.asarray(x.T @ self._rw).ravel()
        self._graph = graph
        self._n = n
        self._x_indptr = x.indptr.astype(np.int64)
        self._x_indices = x.indices.astype(np.int64)
        self._swaps = np.round(replay_noise * np.diff(self._x_indptr)).astype(np.int64)
        self._pool = np.unique(self._x_indices).astype(np.int64)
        # Mean share of the replayed concepts active in a replay: the activity temperatures are
        # relative to. Over the replays' own concepts, not the whole index: the index keeps every
        # concept ever seen (a night of random put-get-loop episodes adds hundreds), and over it
        # the activity, and with it every temperature of the cycle, would drift with the past.
        self.activity = float(np.clip(self._mu.sum() / max(len(self._pool), 1), 1e-6, 0.5))
        support = _support(graph.weights, x)
        self._indptr = support.indptr.astype(np.int64)
        # Column indices as int32 where they fit: an epoch streams them twice per active concept
        # of every replay, and int32 halves those bytes (the weights are not changed).
        self._indices: Indices = (
            np.asarray(support.indices, dtype=np.int32)
            if n < 2**31
            else np.asarray(support.indices, dtype=np.int64)
        )
        self._transpose = transpose_positions(self._indptr, self._indices)
        self._w = on_support(self._indptr, self._indices, sp.csr_matrix(graph.weights))
        self._b = graph.biases.astype(np.float64, copy=True)

    @property
    def support_edges(self) -> int:
        """Undirected pairs the cycle may learn (existing edges and prototype co-activations)."""
        return len(self._indices) // 2

    def field_scales(self) -> FloatArray:
        """:meth:`ConceptGraph.field_scales` of the current weights at the replays' activity."""
        return scales_of(row_sq(self._indptr, self._w), self.activity)

    def epoch(self, temperature: float, eta: float, rng: np.random.Generator) -> float:
        """One pass over the corrupted replays at ``temperature``; ``W += eta dW``, ``b += eta db``.

        Each weight and bias moves by its mean error over the replays that touched it (see the
        module doc). Returns the share of touched (replay, concept) pairs whose sleep response
        was on the wrong side of 1/2.

        Raises:
            ValueError: if ``temperature`` is not positive.
        """
        if not temperature > 0.0:
            raise ValueError(f"temperature={temperature} must be > 0 for sleep responses")
        seed_from(rng)
        grad, esum, row_weight, unit_weight, error_rate = epoch_statistics(
            (self._indptr, self._indices, self._w),
            self._b,
            self.field_scales(),
            (self._x_indptr, self._x_indices, self._swaps, self._rw),
            self._pool,
            temperature,
            (_ERROR_FLOOR, _STRAY_FLOOR),
        )
        apply_update(
            (self._indptr, self._indices, self._transpose),
            (grad, esum, row_weight, unit_weight),
            self._mu,
            eta,
            self._w,
            self._b,
        )
        return error_rate

    def graph(self) -> ConceptGraph:
        """The current weights and biases as a graph (zero weights dropped)."""
        w = sp.csr_matrix(
            (self._w.copy(), self._indices.copy(), self._indptr.copy()), shape=(self._n, self._n)
        )
        w.eliminate_zeros()
        return ConceptGraph(self._graph.index, w, self._b.copy(), self._graph.version)


def _support(weights: sp.csr_matrix, replays: sp.csr_matrix) -> sp.csr_matrix:
    """Pattern (data 1) of the existing edges and the pairs co-active in a replay, no diagonal."""
    x = replays.copy()
    x.data[:] = 1.0
    co = sp.csr_matrix(x.T @ x)
    co.data[:] = 1.0
    w = sp.csr_matrix(weights, copy=True)
    w.data[:] = 1.0
    s = sp.csr_matrix(co + w)
    s.setdiag(0.0)
    s.eliminate_zeros()
    s.sort_indices()
    s.data[:] = 1.0
    return s
