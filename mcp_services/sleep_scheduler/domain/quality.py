"""Label-free and planted-data measures of how well the graph recalls.

* :func:`stability_score` — the label-free measure the consolidation cycle stops on: noisy
  episodes are settled at T = 0 and compared (phi) with the prototype they were merged into.
* :func:`recall_pm1` / :func:`recall_sparse` — the planted-data recall of the done-when items:
  a cue with 10% of the concepts flipped (dense ±1) or 10% of the members swapped (sparse) counts
  as recalled when it settles to an overlap >= 0.95 with its pattern.
* :func:`spurious_share` — the share of random starts that settle far from every stored pattern.

Every measure settles with :func:`.anneal.settle` at T = 0 and a fixed seed, so repeating it on
the same graph gives the same number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.domain.activations import pm1_to_states
from mcp_services.sleep_scheduler.domain.anneal import AnnealSchedule, settle
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph, FloatArray
from mcp_services.sleep_scheduler.domain.prototypes import phi_overlap
from mcp_services.sleep_scheduler.domain.wake_sleep import swap_noise

RECALL_OVERLAP = 0.95
"""A settled cue counts as recalled at this overlap with its pattern (done-when bar)."""


@dataclass(frozen=True)
class RecallReport:
    """Recall of a batch of cues.

    Attributes:
        recall: share of cues whose settled state reached the overlap bar, in [0, 1].
        mean_overlap: mean overlap of the settled states with their targets, in [-1, 1].
        sweeps: T = 0 sweeps the batch needed to settle.
    """

    recall: float
    mean_overlap: float
    sweeps: int

    @property
    def score(self) -> float:
        """One number to compare: recall first, mean overlap only to break ties."""
        return self.recall + 1e-3 * self.mean_overlap


def stability_score(
    graph: ConceptGraph,
    cues: sp.csr_matrix,
    targets: sp.csr_matrix,
    seed: int = 0,
    threshold: float = RECALL_OVERLAP,
) -> RecallReport:
    """Settle ``cues`` (B, N) at T = 0 and compare each with its ``targets`` row by phi."""
    res = settle(graph, cues, AnnealSchedule.zero(), np.random.default_rng(seed))
    phi = phi_overlap(res.states, sp.csr_matrix(targets), graph.size)
    if phi.size == 0:
        return RecallReport(1.0, 1.0, res.sweeps)
    return RecallReport(float(np.mean(phi >= threshold)), float(np.mean(phi)), res.sweeps)


def flip_pm1(
    patterns: NDArray[np.integer], fraction: float, rng: np.random.Generator
) -> NDArray[np.int8]:
    """Copies of ±1 ``patterns`` (P, N), each with exactly ``round(fraction * N)`` flips."""
    out = np.array(patterns, dtype=np.int8)
    n = out.shape[1]
    k = round(fraction * n)
    for row in out:
        row[rng.choice(n, size=k, replace=False)] *= -1
    return out


def recall_pm1(
    graph: ConceptGraph,
    patterns: NDArray[np.integer],
    cue_noise: float = 0.1,
    seed: int = 1,
    threshold: float = RECALL_OVERLAP,
) -> RecallReport:
    """Recall of dense ±1 ``patterns`` (P, N) over the graph's first N concepts.

    Overlap is the usual ``m = (1/N) sum_i xi_i sigma_i`` of the settled state ``sigma``.
    """
    rng = np.random.default_rng(seed)
    _p, n = patterns.shape
    if n != graph.size:
        raise ValueError(f"patterns have {n} concepts but the graph has {graph.size}")
    cues = sp.csr_matrix(pm1_to_states(flip_pm1(patterns, cue_noise, rng)))
    res = settle(graph, cues, AnnealSchedule.zero(), rng)
    sigma = 2.0 * res.states.toarray() - 1.0
    m = np.mean(sigma * patterns, axis=1)
    return RecallReport(float(np.mean(m >= threshold)), float(np.mean(m)), res.sweeps)


def recall_sparse(
    graph: ConceptGraph,
    patterns: sp.csr_matrix,
    cue_noise: float = 0.1,
    seed: int = 1,
    threshold: float = RECALL_OVERLAP,
) -> RecallReport:
    """Recall of sparse {0, 1} ``patterns`` (P, N): cues swap ``cue_noise`` of the members.

    Overlap is phi (a ±1 overlap would call the all-off state 94% similar to a 3% pattern).
    """
    rng = np.random.default_rng(seed)
    pool = np.arange(graph.size, dtype=np.int64)
    cues = swap_noise(sp.csr_matrix(patterns), cue_noise, pool, rng)
    return stability_score(graph, cues, patterns, seed, threshold)


def spurious_share(
    graph: ConceptGraph,
    patterns: sp.csr_matrix,
    starts: int = 200,
    seed: int = 2,
    threshold: float = RECALL_OVERLAP,
) -> float:
    """Share of random starts whose T = 0 attractor is within ``threshold`` phi of no pattern.

    Starts are uniformly random states with the patterns' mean activity.
    """
    rng = np.random.default_rng(seed)
    n = graph.size
    activity = float(patterns.sum()) / max(patterns.shape[0] * n, 1)
    x = sp.csr_matrix((rng.random((starts, n)) < activity).astype(np.float64))
    res = settle(graph, x, AnnealSchedule.zero(), rng)
    best = _best_phi(res.states, sp.csr_matrix(patterns), n)
    return float(np.mean(best < threshold))


def _best_phi(states: sp.csr_matrix, patterns: sp.csr_matrix, n: int) -> FloatArray:
    n11 = np.asarray((states @ patterns.T).toarray())
    na = np.asarray(states.sum(axis=1)).ravel()[:, None]
    nb = np.asarray(patterns.sum(axis=1)).ravel()[None, :]
    denom = np.sqrt(na * (n - na) * nb * (n - nb))
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(denom > 0, (n * n11 - na * nb) / denom, 0.0)
    return np.asarray(phi.max(axis=1) if phi.shape[1] else np.zeros(states.shape[0]))
