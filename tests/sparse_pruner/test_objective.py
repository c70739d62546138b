"""Tests of the pruning objective: the L1 prox, the gradient, the problem builder."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from mcp_services.sparse_pruner.domain import build_problem, lambda_max
from mcp_services.sparse_pruner.domain.objective import (
    edge_gradient,
    loss,
    margins,
    noisy_samples,
    soft_threshold,
)

from .planted import projection_graph, random_patterns


class TestSoftThreshold:
    """soft_threshold is the prox of t|.|: it solves plain magnitude shrinkage exactly."""

    def test_solves_magnitude_shrinkage(self) -> None:
        """soft_threshold(w0, t) = argmin 1/2 (w - w0)^2 + t |w| for every entry."""
        rng = np.random.default_rng(0)
        w0 = rng.standard_normal(40)
        tau = 0.3
        ours = soft_threshold(w0, tau)
        for value, got in zip(w0, ours, strict=True):
            ref = minimize_scalar(
                lambda w, v=value: 0.5 * (w - v) ** 2 + tau * abs(w),
                bounds=(-5.0, 5.0),
                method="bounded",
                options={"xatol": 1e-12},
            )
            assert got == pytest.approx(float(ref.x), abs=1e-8)

    def test_zeroes_small_entries_and_shrinks_the_rest(self) -> None:
        """Entries with |w| <= t become 0, the others move t toward 0."""
        np.testing.assert_allclose(
            soft_threshold(np.array([-2.0, -0.5, 0.0, 0.4, 3.0]), 0.5),
            np.array([-1.5, 0.0, 0.0, 0.0, 2.5]),
        )


class TestGradient:
    """edge_gradient is the derivative of the loss with respect to each edge weight."""

    def test_matches_finite_differences(self) -> None:
        """Central differences of L agree with edge_gradient on random edges."""
        xi = random_patterns(5, 30, 1)
        problem = build_problem(projection_graph(xi), xi, seed=1)
        rng = np.random.default_rng(1)
        w = 0.1 * rng.standard_normal(problem.n_edges)
        r = np.maximum(problem.thresholds - margins(problem, w), 0.0)
        grad = edge_gradient(problem, r)
        h = 1e-6
        for e in rng.choice(problem.n_edges, size=10, replace=False):
            step = np.zeros_like(w)
            step[e] = h
            up = loss(problem, margins(problem, w + step))
            down = loss(problem, margins(problem, w - step))
            assert grad[e] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)

    def test_lambda_max_is_the_largest_gradient_at_zero(self) -> None:
        """lambda_max equals max |dL/dw| at w = 0."""
        xi = random_patterns(5, 30, 2)
        problem = build_problem(projection_graph(xi), xi)
        r = np.maximum(problem.thresholds, 0.0)
        assert lambda_max(problem) == pytest.approx(float(np.abs(edge_gradient(problem, r)).max()))


class TestBuildProblem:
    """The builder turns a graph and its prototypes into margins and training samples."""

    def test_margins_scale_with_the_graph(self) -> None:
        """kappa_i is margin x mean |h_i| on the prototypes, so the current graph meets it."""
        xi = random_patterns(5, 40, 3)
        graph = projection_graph(xi)
        problem = build_problem(graph, xi, margin=1.0, noisy_copies=0)
        fields = np.asarray(graph.weights @ xi.T).T
        np.testing.assert_allclose(problem.thresholds[:, 0], np.abs(fields).mean(axis=0))

    def test_noisy_copies_flip_exactly_the_fraction(self) -> None:
        """Each noisy copy differs from its prototype in round(noise * N) entries."""
        xi = random_patterns(4, 50, 4)
        inputs, targets = noisy_samples(xi, noisy_copies=3, noise=0.1, seed=0)
        assert inputs.shape == (16, 50)
        np.testing.assert_array_equal(targets, np.tile(xi, (4, 1)))
        flips = np.sum(inputs != targets, axis=1)
        np.testing.assert_array_equal(flips, [0] * 4 + [5] * 12)

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"margin": 0.0}, "margin"),
            ({"noisy_copies": -1}, "noisy_copies"),
            ({"noise": 0.6}, "noise"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, float], name: str) -> None:
        """Out-of-range arguments raise ValueError naming them."""
        xi = random_patterns(3, 20, 0)
        with pytest.raises(ValueError, match=name):
            build_problem(projection_graph(xi), xi, **kwargs)  # type: ignore[arg-type]

    def test_prototypes_must_be_plus_minus_one(self) -> None:
        """Prototypes with other values are refused."""
        xi = random_patterns(3, 20, 0)
        with pytest.raises(ValueError, match="prototypes"):
            build_problem(projection_graph(xi), 0.5 * xi)
