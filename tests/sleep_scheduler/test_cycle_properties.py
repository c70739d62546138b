"""Properties of the service's cycle (cycle.run_cycle, what the consolidator runs) on planted data."""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp

from mcp_services.sleep_scheduler.adapters.graph_store import GraphMeta, StoredGraph
from mcp_services.sleep_scheduler.cycle import run_cycle
from mcp_services.sleep_scheduler.domain import (
    ConceptActivation,
    ConceptGraph,
    ConceptIndex,
    ConsolidationConfig,
)
from mcp_services.sleep_scheduler.domain.activations import pm1_to_states
from mcp_services.sleep_scheduler.domain.baselines import hebbian_graph
from mcp_services.sleep_scheduler.domain.consolidation import relative_energy
from mcp_services.sleep_scheduler.domain.planted import planted_pm1, planted_sparse
from mcp_services.sleep_scheduler.domain.quality import recall_pm1, recall_sparse, spurious_share


def activations(states: sp.csr_matrix) -> list[ConceptActivation]:
    return [
        ConceptActivation.of_active(
            [f"concept:{c}" for c in states.indices[states.indptr[r] : states.indptr[r + 1]]]
        )
        for r in range(states.shape[0])
    ]


def over_index(graph: ConceptGraph, n: int) -> ConceptGraph:
    """The graph over concept:0 .. concept:{n-1} in that order (episodes arrive shuffled).

    Concepts no episode showed are unknown to the graph; the service ignores them in a cue, so
    here they get no edges and a negative bias (they stay off).
    """
    ids = [f"concept:{i}" for i in range(n)]
    known = np.array([c in graph.index for c in ids])
    pos = graph.index.positions([c for c, k in zip(ids, known, strict=True) if k])
    sel = sp.csr_matrix((np.ones(len(pos)), (np.flatnonzero(known), pos)), shape=(n, graph.size))
    w = sp.csr_matrix(sel @ graph.weights @ sel.T)
    b = np.full(n, -1.0)
    b[known] = graph.biases[pos]
    return ConceptGraph(ConceptIndex.of_size(n), w, b)


def stored(out_graph: ConceptGraph, protos: sp.csr_matrix, support: np.ndarray) -> StoredGraph:
    meta = GraphMeta(1, 0, out_graph.size, out_graph.edge_count, 0, "test")
    return StoredGraph(meta, out_graph, protos, support.astype(np.int64))


class TestRelativeEnergy:
    def test_matches_the_exact_mean_over_random_states(self) -> None:
        """For N = 8 the baseline equals the exact mean energy over all states with k actives."""
        rng = np.random.default_rng(0)
        w = np.triu(rng.normal(size=(8, 8)), 1)
        g = ConceptGraph(ConceptIndex.of_size(8), sp.csr_matrix(w + w.T), rng.normal(size=8))
        state = sp.csr_matrix(np.array([[1, 0, 1, 1, 0, 0, 0, 0]], dtype=float))
        every = []
        for on in itertools.combinations(range(8), 3):
            x = np.zeros(8)
            x[list(on)] = 1.0
            every.append(x)
        mean = float(np.mean(g.energy(sp.csr_matrix(np.array(every)))))
        assert np.isclose(relative_energy(g, state)[0], g.energy(state)[0] - mean)


class TestEnergyAndSpurious:
    def test_energy_delta_is_negative_on_sparse_planted_data(self) -> None:
        """Sparse assemblies: the replayed prototypes end deeper than random states' level."""
        d = planted_sparse(600, 60, seed=7)
        out = run_cycle(StoredGraph.empty(), activations(d.episodes), ConsolidationConfig())
        assert out.stats.energy_delta < 0 and out.stats.energy_after < 0
        assert recall_sparse(over_index(out.graph, 600), d.patterns).recall >= 0.95

    def test_energy_delta_is_negative_and_spurious_share_drops_on_dense_data(self) -> None:
        """Dense patterns: energy deepens, and fewer random starts end in spurious attractors
        than under the Hebbian rule on the same episodes."""
        d = planted_pm1(150, 15, seed=8)
        out = run_cycle(StoredGraph.empty(), activations(d.episodes), ConsolidationConfig())
        assert out.stats.energy_delta < 0
        g = over_index(out.graph, 150)
        patterns = sp.csr_matrix(pm1_to_states(d.patterns))
        hebb = hebbian_graph(ConceptIndex.of_size(150), d.episodes)
        assert spurious_share(g, patterns) < spurious_share(hebb, patterns)


class TestRepeatedCycles:
    def test_ten_cycles_over_the_same_episodes_never_lower_recall(self) -> None:
        """Each cycle starts from the last one's graph and prototypes, on the same episodes."""
        d = planted_pm1(100, 20, seed=9)
        eps = activations(d.episodes)
        base = StoredGraph.empty()
        recalls = []
        for cycle in range(10):
            out = run_cycle(base, eps, ConsolidationConfig(seed=cycle, max_epochs=60))
            assert out.stats.stability_after.score >= out.stats.stability_before.score
            base = stored(out.graph, out.prototypes, out.support)
            recalls.append(recall_pm1(over_index(out.graph, 100), d.patterns).recall)
        assert recalls[0] >= 0.95
        assert all(b >= a for a, b in itertools.pairwise(recalls)), recalls
