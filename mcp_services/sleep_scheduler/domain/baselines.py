"""Peer learning rules the benchmarks compare consolidation against (not used by the service).

* :func:`hebbian_graph` — the covariance Hebbian rule on the raw episodes,
  ``W = 1/E sum_e (x_e - a)(x_e - a)^T`` with ``a`` the mean activity, and the threshold
  ``b = -a W 1 - theta`` (``theta = 0`` is the classic ±1 Hopfield network for dense patterns;
  sparse patterns need ``theta > 0``, given in units of the mean member field so one grid fits
  every size).
* :func:`plain_wake_sleep` — the design's rule taken literally on the raw episodes, starting from
  Hebbian: wake = episodes clamped, sleep = the episodes annealed from ``t0`` into their
  attractors, ``W += eta (<(s - a)(s - a)^T>_wake - <...>_sleep)`` for a fixed number of epochs,
  with no merging and no stopping rule.
* :func:`dreaming` — Hopfield-Feinstein-Palmer unlearning ("dreaming"): from the ±1 Hebbian
  couplings of the given states, repeatedly settle random states at T = 0 and subtract
  ``eps/N sigma sigma^T`` of the attractor reached; yields the graph after every batch of
  dreams, since its recall rises to an optimum and then collapses (the caller picks the stop).

Both build a dense N x N matrix: they are baselines for N of a few thousand at most.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from mcp_services.sleep_scheduler.domain.anneal import AnnealSchedule, settle
from mcp_services.sleep_scheduler.domain.concept_index import ConceptIndex
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph, FloatArray

_DENSE_MAX = 4096


def _dense_episodes(index: ConceptIndex, episodes: sp.csr_matrix) -> FloatArray:
    if index.size > _DENSE_MAX:
        raise ValueError(f"index has {index.size} concepts: baselines are dense, use <= 4096")
    return np.asarray(sp.csr_matrix(episodes).toarray(), dtype=np.float64)


def _graph(index: ConceptIndex, w: FloatArray, b: FloatArray) -> ConceptGraph:
    np.fill_diagonal(w, 0.0)
    ws = sp.csr_matrix(0.5 * (w + w.T))
    return ConceptGraph(index, ws, b)


def hebbian_graph(index: ConceptIndex, episodes: sp.csr_matrix, theta: float = 0.0) -> ConceptGraph:
    """Covariance-Hebbian graph of {0, 1} ``episodes`` (E, N) with threshold ``theta`` (>= 0).

    ``theta`` is relative: the bias is lowered by ``theta`` times the mean field that a stored
    episode gives its own active concepts.

    Raises:
        ValueError: if ``theta`` is negative or the index is too large for a dense baseline.
    """
    if theta < 0.0:
        raise ValueError(f"theta={theta} must be >= 0")
    x = _dense_episodes(index, episodes)
    a = float(x.mean()) if x.size else 0.0
    xc = x - a
    w = (xc.T @ xc) / max(x.shape[0], 1)
    np.fill_diagonal(w, 0.0)
    b = -a * w.sum(axis=1)
    if theta > 0.0 and x.size:
        h = x @ w + b
        member = float(h[x > 0.5].mean()) if np.any(x > 0.5) else 0.0
        b = b - theta * abs(member)
    return _graph(index, w, b)


def plain_wake_sleep(
    index: ConceptIndex,
    episodes: sp.csr_matrix,
    epochs: int = 30,
    eta: float = 0.01,
    t0: float = 2.0,
    seed: int = 0,
) -> ConceptGraph:
    """The literal wake-sleep rule on raw episodes (see module doc); returns the final graph.

    ``eta`` is relative to the Hebbian weights' RMS, so it means the same at every size.

    Raises:
        ValueError: if ``epochs`` < 0 or ``eta`` <= 0.
    """
    if epochs < 0 or not eta > 0.0:
        raise ValueError(f"epochs={epochs} must be >= 0 and eta={eta} > 0")
    rng = np.random.default_rng(seed)
    x = _dense_episodes(index, episodes)
    graph = hebbian_graph(index, episodes)
    a = float(x.mean()) if x.size else 0.0
    w = np.asarray(graph.weights.toarray())
    b = graph.biases.copy()
    scale = float(np.sqrt(np.mean(w**2))) or 1.0
    xc = x - a
    wake_w = (xc.T @ xc) / max(x.shape[0], 1)
    wake_b = xc.mean(axis=0)
    for _ in range(epochs):
        res = settle(graph, sp.csr_matrix(x), AnnealSchedule(t0=t0), rng)
        sc = res.states.toarray() - a
        dw = wake_w - (sc.T @ sc) / max(x.shape[0], 1)
        w = w + eta * scale * dw
        b = b + eta * scale * (wake_b - sc.mean(axis=0))
        graph = _graph(index, w.copy(), b.copy())
    return graph


def dreaming(
    index: ConceptIndex, states: sp.csr_matrix, eps: float, batch: int, rng: np.random.Generator
) -> Iterator[tuple[int, ConceptGraph]]:
    """Hopfield-Feinstein-Palmer unlearning from the ±1 Hebbian couplings of {0, 1} ``states``.

    ``J = 1/N sum_s sigma sigma^T`` (``sigma = 2 s - 1``, one term per row); each dream settles a
    uniformly random state at T = 0 and subtracts ``eps/N`` times the outer product of the
    attractor. Yields ``(dreams so far, graph)`` after every ``batch`` dreams, without end: the
    caller stops it.

    Raises:
        ValueError: if ``eps`` or ``batch`` is not positive.
    """
    if not eps > 0.0 or batch < 1:
        raise ValueError(f"eps={eps} and batch={batch} must be positive, e.g. 0.01 and 20")
    n = index.size
    sigma = 2.0 * _dense_episodes(index, states) - 1.0
    j = (sigma.T @ sigma) / n
    np.fill_diagonal(j, 0.0)
    for step in itertools.count(1):
        graph = ConceptGraph.from_pm1_couplings(index, j)
        starts = sp.csr_matrix((rng.random((batch, n)) < 0.5).astype(np.float64))
        dreams = 2.0 * settle(graph, starts, AnnealSchedule.zero(), rng).states.toarray() - 1.0
        j -= eps * (dreams.T @ dreams) / n
        np.fill_diagonal(j, 0.0)
        yield step * batch, ConceptGraph.from_pm1_couplings(index, j)
