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

Sparsity: the update touches only pairs where one concept has a non-negligible error and the
other is active in the replay, plus existing edges, so a graph of sparse assemblies stays sparse
(the centring term ``-e mu^T`` is applied on that support only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.special import expit

from mcp_services.sleep_scheduler.domain.anneal import (
    DENSE_BLOCK_LIMIT,
    WorkingBlock,
    touched_units,
)
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph, FloatArray

_ERROR_FLOOR = 1e-3
"""Errors below this are dropped: far-off concepts would add dense, useless dust to W."""

_STRAY_FLOOR = 0.05
"""Error a concept outside the replay and its prototype needs before it counts."""

_CHUNK = 512


@dataclass(frozen=True)
class EpochUpdate:
    """The (unscaled) update of one sleep epoch.

    Attributes:
        delta_w: (N, N) CSR gradient, not yet symmetrised (ConceptGraph.with_update does it).
        delta_b: (N,) plain-bias gradient (centring already folded in).
        error_rate: share of (replay, concept) pairs on the touched sets whose sleep response
            was on the wrong side of 1/2.
    """

    delta_w: sp.csr_matrix
    delta_b: FloatArray
    error_rate: float


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


def sleep_epoch(
    graph: ConceptGraph,
    replays: sp.csr_matrix,
    mu: FloatArray,
    temperature: float,
    replay_noise: float,
    rng: np.random.Generator,
    scales: FloatArray | None = None,
    replay_weights: FloatArray | None = None,
) -> EpochUpdate:
    """The wake-minus-sleep statistics of one pass over ``replays`` (K, N) {0, 1} prototypes.

    Args:
        graph: the current model.
        replays: clean prototypes to replay.
        mu: (N,) centring offsets, normally the weighted mean activity of ``replays``.
        temperature: relative temperature (> 0) of the sleep responses.
        replay_noise: fraction in [0, 1) of each replay's active concepts swapped before replay.
        rng: randomness for the corruption.
        scales: precomputed field scales of ``graph`` (recomputed when None).
        replay_weights: (K,) non-negative weights (default 1), normalised to sum to one.

    Raises:
        ValueError: if ``temperature`` is not positive or ``replay_noise`` is outside [0, 1).
    """
    if not temperature > 0.0:
        raise ValueError(f"temperature={temperature} must be > 0 for sleep responses")
    if not 0.0 <= replay_noise < 1.0:
        raise ValueError(f"replay_noise={replay_noise} must be in [0, 1), e.g. 0.1")
    k, n = replays.shape
    sc = graph.field_scales() if scales is None else scales
    rw = np.ones(k) if replay_weights is None else np.asarray(replay_weights, dtype=np.float64)
    rw = rw / max(float(rw.sum()), 1e-300)
    pool = np.unique(replays.indices).astype(np.int64)
    rows_g: list[NDArray[np.int64]] = []
    cols_g: list[NDArray[np.int64]] = []
    vals: list[FloatArray] = []
    dbt = np.zeros(n)
    wrong = 0.0
    seen = 0
    # Rows per chunk so that a chunk's touched set stays near a dense block (see anneal.py).
    chunk = int(min(_CHUNK, max(8, k * DENSE_BLOCK_LIMIT // max(4 * len(pool), 1))))
    for start in range(0, k, chunk):
        xi = replays[start : start + chunk]
        c = swap_noise(xi, replay_noise, pool, rng)
        units = touched_units(graph, sp.vstack([xi, c], format="csr"))
        block = WorkingBlock(graph, units, sc)
        c_loc = np.asarray(c[:, units].toarray())
        e = np.asarray(xi[:, units].toarray()) - expit(
            block.fields(c_loc) / (temperature * block.scales)
        )
        wrong += float(np.sum(np.abs(e) > 0.5))
        seen += e.size
        # Concepts in neither the prototype nor its replay only matter when clearly wrong (a
        # spurious activation); their faint hot-temperature errors would densify the graph.
        x_loc = np.asarray(xi[:, units].toarray())
        own = (x_loc > 0.5) | (c_loc > 0.5)
        e[np.abs(e) < np.where(own, _ERROR_FLOOR, _STRAY_FLOOR)] = 0.0
        e *= rw[start : start + chunk, None]
        e_sp = sp.csr_matrix(e)
        c_sp = sp.csr_matrix(c_loc)
        grad = sp.csr_matrix(e_sp.T @ c_sp)
        # Support: pairs co-active in a prototype, and existing edges. Concepts swapped in by the
        # replay noise get no new edges: their own negative bias already rejects them, and
        # edges to every random stray would make the graph dense.
        x_sp = sp.csr_matrix(x_loc)
        co = sp.csr_matrix(x_sp.T @ x_sp)
        support = sp.csr_matrix(abs(co) + abs(block.w_sparse))
        support.data[:] = 1.0
        grad = sp.csr_matrix(grad.multiply(support))
        esum = np.asarray(e.sum(axis=0)).ravel()
        centring = sp.diags(esum) @ support @ sp.diags(mu[units])
        local = sp.coo_matrix(grad - centring)
        rows_g.append(units[local.row])
        cols_g.append(units[local.col])
        vals.append(local.data)
        dbt[units] += esum
    # One COO -> CSR conversion sums the chunks' duplicates: adding chunk matrices one by one
    # would re-copy the growing sum each time (quadratic in the number of replays).
    delta_w = sp.csr_matrix(
        (
            np.concatenate(vals) if vals else np.zeros(0),
            (
                np.concatenate(rows_g) if rows_g else np.zeros(0, dtype=np.int64),
                np.concatenate(cols_g) if cols_g else np.zeros(0, dtype=np.int64),
            ),
        ),
        shape=(n, n),
    )
    delta_w.sum_duplicates()
    delta_w.setdiag(0.0)  # no self-coupling: keep the bias correction consistent with W
    delta_w.eliminate_zeros()
    # Plain bias: b = b_centred - W mu, so db = db_centred - sym(dW) mu.
    sym = 0.5 * (delta_w + delta_w.T)
    delta_b = dbt - np.asarray(sym @ mu).ravel()
    return EpochUpdate(delta_w, delta_b, wrong / max(seen, 1))
