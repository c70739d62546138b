"""Tests of recall: T = 0 settling, fixed points and the quality report."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.sparse_pruner.domain import assess_quality, make_graph, settle
from mcp_services.sparse_pruner.domain.recall import corrupt, fixed_points

from .planted import projection_graph, random_patterns


class TestSettle:
    """Asynchronous T = 0 updates reach fixed points of the stored patterns."""

    def test_stored_pattern_is_a_fixed_point(self) -> None:
        """A prototype of a projection-rule graph does not move."""
        xi = random_patterns(10, 100, 0)
        graph = projection_graph(xi)
        np.testing.assert_array_equal(settle(graph, xi), xi)

    def test_corrupted_cue_returns_to_its_pattern(self) -> None:
        """A cue with 10% flipped settles back onto its prototype."""
        xi = random_patterns(10, 100, 0)
        cues = corrupt(xi, 0.1, 1, seed=1)
        np.testing.assert_array_equal(settle(projection_graph(xi), cues, seed=1), xi)

    def test_energy_never_rises(self) -> None:
        """The settled state has energy no higher than the cue (symmetric W, zero diagonal)."""
        xi = random_patterns(10, 80, 2)
        graph = projection_graph(xi)
        cue = corrupt(xi, 0.3, 1, seed=2)
        final = settle(graph, cue, seed=2)

        def energy(s: np.ndarray) -> np.ndarray:
            return np.asarray(-0.5 * np.sum(s * (graph.weights @ s.T).T, axis=1))

        assert np.all(energy(final) <= energy(cue) + 1e-12)

    def test_bad_states_shape(self) -> None:
        """States of the wrong width are refused."""
        graph = projection_graph(random_patterns(2, 20, 0))
        with pytest.raises(ValueError, match="states"):
            settle(graph, np.ones((2, 5)))


class TestQuality:
    """The quality report measures recall and fixed points reproducibly."""

    def test_intact_graph_recalls_everything(self) -> None:
        """A projection graph at P/N = 0.1 recalls every cue and fixes every prototype."""
        xi = random_patterns(10, 100, 3)
        report = assess_quality(projection_graph(xi), xi)
        assert report.recall == 1.0
        assert report.fixed_fraction == 1.0
        assert report.cues == 50

    def test_empty_graph_recalls_nothing(self) -> None:
        """Without edges nothing is recalled and no prototype is a fixed point."""
        xi = random_patterns(5, 60, 4)
        empty = make_graph(sp.csr_matrix((60, 60)), np.zeros(60))
        report = assess_quality(empty, xi)
        assert report.recall == 0.0
        assert not fixed_points(empty, xi).any()

    def test_same_seed_same_report(self) -> None:
        """Two assessments with one seed agree exactly."""
        xi = random_patterns(20, 100, 5)
        graph = projection_graph(xi, density=0.3)
        first, second = assess_quality(graph, xi, seed=7), assess_quality(graph, xi, seed=7)
        assert (first.recall, first.mean_overlap, first.cues) == (
            second.recall,
            second.mean_overlap,
            second.cues,
        )
        np.testing.assert_array_equal(first.fixed_points, second.fixed_points)

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"cue_noise": 0.5}, "cue_noise"),
            ({"overlap_threshold": 0.0}, "overlap_threshold"),
            ({"cues_per_pattern": 0}, "cues_per_pattern"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, float], name: str) -> None:
        """Out-of-range arguments raise ValueError naming them."""
        xi = random_patterns(2, 20, 0)
        with pytest.raises(ValueError, match=name):
            assess_quality(projection_graph(xi), xi, **kwargs)  # type: ignore[arg-type]
