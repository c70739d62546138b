"""Tests of merging, the consolidation cycle and its recall on planted memories (small sizes)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.sleep_scheduler.domain import (
    ConceptActivation,
    ConceptGraph,
    ConceptIndex,
    ConsolidationConfig,
    consolidate,
    consolidate_states,
)
from mcp_services.sleep_scheduler.domain.activations import pm1_to_states
from mcp_services.sleep_scheduler.domain.baselines import dreaming, hebbian_graph
from mcp_services.sleep_scheduler.domain.planted import planted_pm1, planted_sparse
from mcp_services.sleep_scheduler.domain.prototypes import merge_episodes
from mcp_services.sleep_scheduler.domain.quality import recall_pm1, recall_sparse, spurious_share


class TestMergeEpisodes:
    def test_dense_copies_merge_into_one_prototype_per_pattern(self) -> None:
        """Five 10%-noisy copies of each dense pattern form one cluster with ~1% errors."""
        d = planted_pm1(200, 40, seed=1)
        protos = merge_episodes(d.episodes)
        assert protos.count == 40
        # Every cluster holds the copies of exactly one pattern.
        for k in range(protos.count):
            assert len(set(d.source[protos.assignment == k].tolist())) == 1
        src = np.array([d.source[protos.assignment == k][0] for k in range(protos.count)])
        errors = np.mean(protos.states.toarray() != pm1_to_states(d.patterns[src]))
        assert errors < 0.02

    def test_sparse_copies_merge_by_phi(self) -> None:
        """Sparse assemblies (2-5% active) are recovered one cluster per assembly."""
        d = planted_sparse(1000, 100, seed=2)
        assert merge_episodes(d.episodes).count == 100

    def test_threshold_out_of_range_is_rejected(self) -> None:
        """A threshold outside (0, 1) raises ValueError naming it."""
        with pytest.raises(ValueError, match="threshold"):
            merge_episodes(sp.csr_matrix((2, 4)), threshold=1.5)


class TestCapacity:
    def test_dense_recall_at_load_0_3_beats_hebbian(self) -> None:
        """At N = 200 and alpha = 0.3 consolidation recalls >= 95% where Hebbian recalls ~0."""
        d = planted_pm1(200, 60, seed=3)
        idx = ConceptIndex.of_size(200)
        out = consolidate_states(ConceptGraph.empty(idx), d.episodes)
        assert recall_pm1(out.graph, d.patterns).recall >= 0.95
        assert recall_pm1(hebbian_graph(idx, d.episodes), d.patterns).recall < 0.5

    def test_sparse_recall_beats_tuned_hebbian_covariance(self) -> None:
        """Sparse assemblies at load 0.3 (N = 400) are recalled >= 95%, above Hebbian's best."""
        d = planted_sparse(400, 120, seed=4)
        idx = ConceptIndex.of_size(400)
        out = consolidate_states(ConceptGraph.empty(idx), d.episodes)
        ours = recall_sparse(out.graph, d.patterns).recall
        hebb = max(
            recall_sparse(hebbian_graph(idx, d.episodes, th), d.patterns).recall
            for th in (0.0, 0.25, 0.5, 0.75)
        )
        assert ours >= 0.95
        assert ours > hebb

    def test_sparse_graph_stays_sparse(self) -> None:
        """Learning sparse assemblies adds edges only within assemblies, far from all pairs."""
        d = planted_sparse(400, 40, seed=5)
        out = consolidate_states(ConceptGraph.empty(ConceptIndex.of_size(400)), d.episodes)
        assert out.graph.edge_count < 0.15 * 400 * 399 / 2


class TestRepeatedCycles:
    def test_ten_cycles_on_the_same_episodes_never_lower_recall(self) -> None:
        """Recall after each of ten cycles over the same episodes is >= the previous one's."""
        d = planted_pm1(150, 30, seed=6)
        graph = ConceptGraph.empty(ConceptIndex.of_size(150))
        recalls = []
        stability = []
        for cycle in range(10):
            cfg = ConsolidationConfig(seed=cycle, max_epochs=40)
            out = consolidate_states(graph, d.episodes, cfg)
            graph = out.graph
            recalls.append(recall_pm1(graph, d.patterns).recall)
            stability.append(out.stats.stability_after.score - out.stats.stability_before.score)
        assert all(b >= a for a, b in itertools.pairwise(recalls)), recalls
        assert min(stability) >= 0.0

    def test_energy_of_replays_falls_and_spurious_attractors_drop(self) -> None:
        """On planted data energy_delta < 0 and fewer random starts end in spurious states."""
        d = planted_pm1(200, 30, seed=7)
        idx = ConceptIndex.of_size(200)
        hebb = hebbian_graph(idx, d.episodes)
        out = consolidate_states(hebb, d.episodes)
        assert out.stats.energy_delta < 0.0
        patterns = sp.csr_matrix(pm1_to_states(d.patterns))
        assert spurious_share(out.graph, patterns) < spurious_share(hebb, patterns)


class TestDreamingBaseline:
    def test_unlearning_random_attractors_raises_recall_of_clean_patterns(self) -> None:
        """Hopfield-Feinstein-Palmer dreaming on clean patterns at load 0.25 (N = 100) lifts
        recall from the Hebbian start (~0.3) to >= 0.95 within 1200 dreams."""
        d = planted_pm1(100, 25, seed=0)
        states = sp.csr_matrix(pm1_to_states(d.patterns))
        idx = ConceptIndex.of_size(100)
        start = recall_pm1(hebbian_graph(idx, states), d.patterns).recall
        run = dreaming(idx, states, 0.01, 20, np.random.default_rng(0))
        best = max(recall_pm1(g, d.patterns).recall for _, g in itertools.islice(run, 60))
        assert start < 0.5 and best >= 0.95


class TestConsolidateActivations:
    def test_cycle_grows_the_index_and_reports_its_figures(self) -> None:
        """consolidate() adds the episodes' concepts to the index and fills CycleStats."""
        eps = [ConceptActivation.of_active([f"c:{i}" for i in range(k, k + 8)]) for k in (0, 20)]
        eps = eps * 3
        out = consolidate(ConceptGraph.empty(ConceptIndex()), eps)
        assert out.graph.size == 16
        assert out.stats.episodes_processed == 6
        assert out.stats.prototypes == 2
        assert len(out.prototypes) == 2 and out.prototype_weights == (3.0, 3.0)
        assert out.stats.energy_delta < 0.0
        assert out.stats.settle_loops >= 1

    def test_rehearsal_weights_must_match(self) -> None:
        """A weight count that differs from the rehearsal prototypes raises ValueError."""
        reh = [ConceptActivation.of_active(["a", "b"])]
        with pytest.raises(ValueError, match="one weight per prototype"):
            consolidate(ConceptGraph.empty(ConceptIndex()), [], rehearsal=reh, rehearsal_weights=[])

    def test_bad_config_names_the_field(self) -> None:
        """An out-of-range knob raises ValueError naming it."""
        with pytest.raises(ValueError, match="eta"):
            ConsolidationConfig(eta=0.0)
