"""TEST FIXTURE: graphs that store planted random patterns, for the pruner's tests and bench.

Consolidation (the SleepScheduler) produces real graphs: :func:`consolidated` runs the scheduler's
own cycle on noisy episodes of planted patterns. The other stand-ins store their patterns by the
projection (pseudo-inverse) rule, which makes every pattern a fixed point with wide basins up to
``P / N`` of about 0.5 on a complete graph, so the pruner starts from a graph that really holds its
memories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from mcp_services.sleep_scheduler.domain import ConceptGraph as SchedulerGraph
from mcp_services.sleep_scheduler.domain import ConceptIndex, consolidate_states
from mcp_services.sleep_scheduler.domain.planted import planted_pm1
from mcp_services.sparse_pruner.domain import ConceptGraph, make_graph
from mcp_services.sparse_pruner.domain.graph import FloatArray
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot, to_pm1


def random_patterns(n_patterns: int, n_concepts: int, seed: int) -> FloatArray:
    """``(P, N)`` independent uniform +-1 patterns."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([-1.0, 1.0]), size=(n_patterns, n_concepts))


def correlated_patterns(
    n_patterns: int, n_concepts: int, seed: int, n_parents: int = 2, flip: float = 0.15
) -> FloatArray:
    """``(P, N)`` patterns that are noisy children of a few parents (strongly correlated)."""
    rng = np.random.default_rng(seed)
    parents = rng.choice(np.array([-1.0, 1.0]), size=(n_parents, n_concepts))
    children = parents[rng.integers(0, n_parents, size=n_patterns)]
    flips = rng.random(children.shape) < flip
    return np.where(flips, -children, children)


def projection_graph(
    patterns: FloatArray, biases: FloatArray | None = None, density: float = 1.0, seed: int = 0
) -> ConceptGraph:
    """Graph storing ``patterns`` by the projection rule ``W = X^T (X X^T)^-1 X / N``.

    With ``density < 1`` the rule is restricted to a random symmetric support (a diluted graph).
    """
    n = patterns.shape[1]
    overlap = patterns @ patterns.T / n
    weights = patterns.T @ np.linalg.solve(overlap, patterns) / n
    np.fill_diagonal(weights, 0.0)
    if density < 1.0:
        rng = np.random.default_rng(seed)
        upper = np.triu(rng.random((n, n)) < density, k=1)
        weights = np.where(upper | upper.T, weights, 0.0)
    b = np.zeros(n) if biases is None else biases
    return make_graph(sp.csr_matrix(weights), b)


def hebbian_sparse_graph(
    n_concepts: int, degree: int, n_patterns: int, seed: int
) -> tuple[ConceptGraph, FloatArray]:
    """A random sparse support of mean ``degree`` with Hebbian weights ``sum_mu xi_i xi_j / degree``.

    Built edge-wise (never dense), for benchmark graphs of up to millions of edges.
    """
    rng = np.random.default_rng(seed)
    patterns = rng.choice(np.array([-1.0, 1.0]), size=(n_patterns, n_concepts))
    n_pairs = n_concepts * degree // 2
    i = rng.integers(0, n_concepts, size=2 * n_pairs)
    j = rng.integers(0, n_concepts, size=2 * n_pairs)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keys = np.unique(lo[lo != hi] * n_concepts + hi[lo != hi])[:n_pairs]
    ei, ej = keys // n_concepts, keys % n_concepts
    w = np.einsum("pe,pe->e", patterns[:, ei], patterns[:, ej]) / degree
    # A zero Hebbian sum would drop the edge; keep the support with a tiny weight instead.
    w[w == 0.0] = 0.1 / degree
    upper = sp.coo_matrix((w, (ei, ej)), shape=(n_concepts, n_concepts))
    graph = make_graph(sp.csr_matrix(upper + upper.T), np.zeros(n_concepts))
    return graph, patterns


@dataclass(frozen=True)
class Consolidated:
    """A consolidated graph in the pruner's terms, with the planted truth beside it."""

    snapshot: GraphSnapshot
    graph: ConceptGraph
    truth: np.ndarray

    @property
    def prototypes(self) -> np.ndarray:
        return self.snapshot.pm1_prototypes()


def consolidated(n: int, alpha: float, seed: int) -> Consolidated:
    """Consolidate ``round(alpha n)`` planted patterns (5 noisy episodes each) with the
    scheduler's own cycle, as the service runs it, and hand the result over as the pruner reads
    it (a {0, 1} snapshot with the merged prototypes)."""
    data = planted_pm1(n, round(alpha * n), copies=5, noise=0.1, seed=seed)
    index = ConceptIndex.of_size(n)
    out = consolidate_states(SchedulerGraph.empty(index), data.episodes)
    states = out.prototypes.states
    snapshot = GraphSnapshot(
        version=1,
        concept_ids=index.ids,
        weights=out.graph.weights,
        biases=out.graph.biases,
        prototypes=tuple(
            states.indices[states.indptr[k] : states.indptr[k + 1]].astype(np.int64)
            for k in range(states.shape[0])
        ),
        support=tuple(int(w) for w in np.rint(out.prototypes.weights)),
    )
    return Consolidated(snapshot, to_pm1(snapshot), data.patterns.astype(np.float64))
