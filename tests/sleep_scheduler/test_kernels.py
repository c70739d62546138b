"""The compiled kernels against plain numpy references on small random problems."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit

from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex
from mcp_services.sleep_scheduler.domain.anneal import AnnealSchedule, settle
from mcp_services.sleep_scheduler.domain.kernels import epoch_statistics, seed_from

N = 30
FLOORS = (1e-3, 0.05)


def problem(seed: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, sp.csr_matrix, np.ndarray]:
    """A symmetric support with weights, biases (some positive), scales, replays, weights."""
    rng = np.random.default_rng(seed)
    pattern = np.triu(rng.random((N, N)) < 0.2, 1)
    w = np.where(pattern, rng.normal(size=(N, N)), 0.0)
    w = w + w.T
    pattern = pattern | pattern.T
    support = sp.csr_matrix(pattern.astype(np.float64))
    support.sort_indices()
    s_w = np.asarray(w[support.nonzero()], dtype=np.float64)
    bias = rng.normal(size=N) - 0.5
    x = sp.csr_matrix((rng.random((6, N)) < 0.15).astype(np.float64))
    x.sort_indices()
    rw = rng.random(6)
    return support, s_w, bias, x, rw / rw.sum()


def reference(
    support: sp.csr_matrix,
    s_w: np.ndarray,
    bias: np.ndarray,
    scales: np.ndarray,
    x: sp.csr_matrix,
    rw: np.ndarray,
    temperature: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The epoch's statistics without replay noise, one replay and one concept at a time."""
    s_dense = support.toarray() > 0
    w = np.zeros((N, N))
    w[support.nonzero()] = s_w
    grad = np.zeros((N, N))
    grad_weight = np.zeros((N, N))
    esum = np.zeros(N)
    unit_weight = np.zeros(N)
    for r in range(x.shape[0]):
        xi = x[r].toarray().ravel()
        active = np.flatnonzero(xi)
        touched = set(active) | set(np.flatnonzero(bias > 0))
        for j in active:
            touched |= set(np.flatnonzero(s_dense[j]))
        h = bias + xi @ w
        for u in touched:
            e = xi[u] - expit(h[u] / (temperature * scales[u]))
            own = xi[u] > 0
            if abs(e) < (FLOORS[0] if own else FLOORS[1]):
                e = 0.0
            esum[u] += rw[r] * e
            unit_weight[u] += rw[r]
            for j in active:
                if s_dense[j, u]:
                    grad[j, u] += rw[r] * e
                    grad_weight[j, u] += rw[r]
    return grad[support.nonzero()], esum, grad_weight[support.nonzero()], unit_weight


class TestEpochStatistics:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_matches_the_per_replay_reference_without_noise(self, seed: int) -> None:
        """Gradient, error sums and the replay weight behind them equal the plain loops'."""
        support, s_w, bias, x, rw = problem(seed)
        scales = 0.5 + np.random.default_rng(seed).random(N)
        seed_from(np.random.default_rng(seed))
        grad, esum, gw, uw, _ = epoch_statistics(
            (support.indptr.astype(np.int64), support.indices.astype(np.int64), s_w),
            bias,
            scales,
            (
                x.indptr.astype(np.int64),
                x.indices.astype(np.int64),
                np.zeros(x.shape[0], dtype=np.int64),
                rw,
            ),
            np.arange(N, dtype=np.int64),
            0.7,
            FLOORS,
        )
        ref = reference(support, s_w, bias, scales, x, rw, 0.7)
        for got, want in zip((grad, esum, gw, uw), ref, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


class TestSettle:
    def test_settled_states_are_fixed_points_of_the_zero_temperature_rule(self) -> None:
        """Every settled row has each concept on exactly where its field is positive (or zero
        and it was on), the definition of a T = 0 attractor."""
        support, s_w, bias, x, _ = problem(5)
        w = sp.csr_matrix((s_w, support.indices, support.indptr), shape=(N, N))
        graph = ConceptGraph(ConceptIndex.of_size(N), w, bias)
        res = settle(graph, x, AnnealSchedule.zero(), np.random.default_rng(0))
        assert res.settled
        s = res.states.toarray()
        h = s @ w.toarray() + bias
        assert np.all((h > 0) <= (s > 0.5)) and np.all((h < 0) <= (s < 0.5))
