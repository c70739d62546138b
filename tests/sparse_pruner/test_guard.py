"""Tests of the pruning run behind its quality guard, on graphs that store planted patterns."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.sparse_pruner.domain import (
    GUARD_SIGMAS,
    ConceptGraph,
    PruneSettings,
    PruningPlan,
    assess_quality,
    make_graph,
    plan_pruning,
    preview_pruning,
)
from mcp_services.sparse_pruner.domain.objective import soft_threshold

from .planted import projection_graph, random_patterns


def _planted(n: int, alpha: float, seed: int) -> tuple[ConceptGraph, np.ndarray]:
    xi = random_patterns(round(alpha * n), n, seed)
    return projection_graph(xi), xi


def _check_graph_contract(plan: PruningPlan, original: ConceptGraph) -> None:
    w = plan.graph.weights
    assert abs(w - w.T).max() == 0.0 if w.nnz else True
    assert not np.any(w.diagonal())
    # Pruning never adds an edge: the new support is inside the old one.
    assert (abs(w).sign() - abs(w).sign().multiply(abs(original.weights).sign())).nnz == 0
    np.testing.assert_array_equal(plan.graph.biases, original.biases)


class TestPruningKeepsTheMemory:
    """Pruning removes most edges while the stored patterns stay recallable."""

    def test_alpha_0_1_prunes_80_percent_with_recall(self) -> None:
        """At P/N = 0.1 (N = 200) at least 80% of edges go and recall stays >= 0.95."""
        graph, xi = _planted(200, 0.1, seed=0)
        plan = plan_pruning(graph, xi)
        assert plan.accepted, plan.reason
        assert plan.pruned_fraction >= 0.80
        assert plan.quality_after.recall >= 0.95
        assert plan.quality_after.fixed_points.all()
        _check_graph_contract(plan, graph)

    def test_alpha_0_2_prunes_half_with_small_drop(self) -> None:
        """At P/N = 0.2 (N = 300) at least 50% of edges go and recall drops by <= 0.05."""
        graph, xi = _planted(300, 0.2, seed=1)
        plan = plan_pruning(graph, xi)
        assert plan.accepted, plan.reason
        assert plan.pruned_fraction >= 0.50
        assert plan.quality_before.recall - plan.quality_after.recall <= 0.05
        assert plan.quality_after.fixed_points.all()
        _check_graph_contract(plan, graph)

    def test_magnitude_shrinkage_is_blind_to_the_memory(self) -> None:
        """One soft threshold of |W| at the same sparsity breaks fixed points L1 pruning keeps."""
        graph, xi = _planted(200, 0.2, seed=1)
        plan = plan_pruning(graph, xi)
        keep = plan.graph.n_edges
        data = np.sort(np.abs(graph.weights.data))[::-1]
        shrunk = graph.weights.copy()
        # Threshold at the (2 * keep)-th largest stored entry: W holds each edge twice.
        shrunk.data = soft_threshold(shrunk.data, float(data[2 * keep]))
        shrunk.eliminate_zeros()
        magnitude = make_graph(sp.csr_matrix(shrunk), graph.biases)
        assert magnitude.n_edges <= keep
        quality = assess_quality(magnitude, xi)
        assert plan.quality_after.fixed_points.all()
        assert quality.fixed_fraction < 0.5
        assert quality.recall < plan.quality_after.recall - 0.2


class TestGuard:
    """The guard backs tau off when recall would drop too much, and refuses when it cannot help."""

    def test_backs_off_an_aggressive_tau(self) -> None:
        """A tau that breaks recall is halved until the graph passes."""
        graph, xi = _planted(120, 0.2, seed=1)
        plan = plan_pruning(graph, xi, PruneSettings(tau=0.4, retention_target=0.0))
        assert plan.accepted, plan.reason
        assert len(plan.attempts) >= 2
        assert not plan.attempts[0].passed
        assert plan.tau_used < 0.4
        assert plan.quality_before.recall - plan.quality_after.recall <= 0.05

    def test_refuses_when_the_bar_cannot_be_met(self) -> None:
        """With no back-off left and a breaking tau, the run is refused and nothing changes."""
        graph, xi = _planted(120, 0.2, seed=1)
        settings = PruneSettings(tau=0.4, retention_target=0.0, max_backoffs=0)
        plan = plan_pruning(graph, xi, settings)
        assert not plan.accepted
        assert "refused" in plan.reason
        assert plan.graph is graph
        assert plan.removed_i.size == 0
        assert plan.edges_after == plan.edges_before

    def test_zero_tolerance_refuses_every_loss_beyond_the_noise(self) -> None:
        """max_quality_drop = 0 refuses a loss the measure can tell from noise, and lets through
        only an attempt whose drop is within GUARD_SIGMAS standard errors (here the back-off's
        smaller removal, whichever of its refit and bare graphs the guard keeps)."""
        graph, xi = _planted(120, 0.2, seed=1)
        settings = PruneSettings(
            tau=0.9, retention_target=0.0, max_backoffs=0, max_quality_drop=0.0
        )
        refused = plan_pruning(graph, xi, settings)
        assert not refused.accepted
        backed_off = plan_pruning(graph, xi, replace(settings, max_backoffs=1))
        assert not backed_off.attempts[0].passed
        assert backed_off.accepted, backed_off.reason
        last = backed_off.attempts[-1]
        assert last.drop <= GUARD_SIGMAS * last.drop_stderr
        assert last.edges_kept < graph.n_edges


class TestLimits:
    """retention_target and max_edges_to_prune cap what one run removes."""

    def test_retention_target(self) -> None:
        """At least retention_target of the edges stay."""
        graph, xi = _planted(120, 0.1, seed=3)
        plan = plan_pruning(graph, xi, PruneSettings(retention_target=0.5))
        assert plan.accepted, plan.reason
        assert plan.edges_after >= 0.5 * plan.edges_before

    def test_max_edges_to_prune(self) -> None:
        """No more than max_edges_to_prune edges are removed."""
        graph, xi = _planted(120, 0.1, seed=3)
        plan = plan_pruning(graph, xi, PruneSettings(max_edges_to_prune=100))
        assert plan.accepted, plan.reason
        assert plan.removed_i.size == plan.edges_before - plan.edges_after
        assert 0 < plan.edges_before - plan.edges_after <= 100


class TestPreview:
    """The preview reports what would go and the recall change without changing anything."""

    def test_preview_matches_plan_and_leaves_input_intact(self) -> None:
        """Preview lists the plan's removed edges and the input graph is untouched."""
        graph, xi = _planted(120, 0.1, seed=3)
        before = graph.weights.copy()
        preview = preview_pruning(graph, xi)
        plan = plan_pruning(graph, xi)
        assert (graph.weights - before).count_nonzero() == 0
        np.testing.assert_array_equal(preview.removed_i, plan.removed_i)
        np.testing.assert_array_equal(preview.removed_j, plan.removed_j)
        assert preview.edges_after == plan.edges_after
        assert preview.expected_quality_change == pytest.approx(plan.quality_change)
        assert preview.would_accept == plan.accepted
        # Every reported edge exists in the input graph with the reported weight.
        old = np.asarray(graph.weights[preview.removed_i, preview.removed_j]).ravel()
        np.testing.assert_array_equal(old, preview.removed_weights)


class TestSettings:
    """Settings validate at construction and name the bad field."""

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("tau", 0.0),
            ("tau", 1.5),
            ("max_quality_drop", -0.1),
            ("retention_target", 1.2),
            ("max_edges_to_prune", -1),
            ("noisy_copies", -1),
            ("cue_noise", 0.5),
            ("tol", 0.0),
            ("min_cues", -1),
        ],
    )
    def test_bad_field(self, field: str, value: float) -> None:
        """An out-of-range value raises ValueError naming the field."""
        with pytest.raises(ValueError, match=field):
            PruneSettings(**{field: value})  # type: ignore[arg-type]

    def test_bad_prototypes(self) -> None:
        """Prototypes of the wrong width are refused before any work."""
        graph, xi = _planted(60, 0.1, seed=0)
        with pytest.raises(ValueError, match="prototypes"):
            plan_pruning(graph, xi[:, :10])
