"""The compiled kernels against plain numpy references on small random problems."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit

from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex
from mcp_services.sleep_scheduler.domain.anneal import AnnealSchedule, settle
from mcp_services.sleep_scheduler.domain.kernels import (
    epoch_statistics,
    leave_one_out_phi,
    on_support,
    quadratic_forms,
    seed_from,
    transpose_positions,
)
from mcp_services.sleep_scheduler.domain.prototypes import phi_overlap

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
    @pytest.mark.parametrize("dense_from", [0.0, np.inf])
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_matches_the_per_replay_reference_without_noise(
        self, seed: int, dense_from: float
    ) -> None:
        """Gradient, error sums and the replay weight behind them equal the plain loops',
        whether the fields are made with a touched test per entry or by resetting all of them
        (every replay one way: dense_from 0 or inf)."""
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
            dense_from,
        )
        ref = reference(support, s_w, bias, scales, x, rw, 0.7)
        # The weight behind entry (j, u) is that of the replays with j active: one per row j.
        per_entry = np.repeat(gw, np.diff(support.indptr))
        for got, want in zip((grad, esum, per_entry, uw), ref, strict=True):
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


def symmetric_pattern(n: int, density: float, seed: int) -> np.ndarray:
    """A random symmetric boolean pattern without diagonal."""
    upper = np.triu(np.random.default_rng(seed).random((n, n)) < density, 1)
    return np.asarray(upper | upper.T)


class TestFieldPaths:
    def test_dense_and_touched_fields_give_the_same_epoch_bit_for_bit(self) -> None:
        """With replay noise on, an epoch made with a touched test per entry and one made by
        resetting every field give identical statistics (the swaps draw the same numbers)."""
        rng = np.random.default_rng(7)
        n = 400
        x = sp.csr_matrix((rng.random((40, n)) < 0.04).astype(np.float64))
        x.sort_indices()
        co = x.toarray().T @ x.toarray()
        np.fill_diagonal(co, 0.0)
        w = np.triu(np.where(co > 0, rng.normal(size=(n, n)), 0.0), 1)
        support = sp.csr_matrix(w + w.T)
        support.sort_indices()
        replays = (
            x.indptr.astype(np.int64),
            x.indices.astype(np.int64),
            np.full(x.shape[0], 2, dtype=np.int64),
            np.full(x.shape[0], 1.0 / x.shape[0]),
        )
        pool = np.unique(x.indices).astype(np.int64)
        s = (support.indptr.astype(np.int64), support.indices, support.data)
        bias = rng.normal(size=n) - 1.0
        outs = []
        for dense_from in (0.0, np.inf):
            seed_from(np.random.default_rng(3))
            outs.append(
                epoch_statistics(s, bias, np.ones(n), replays, pool, 0.5, FLOORS, dense_from)
            )
        for got, want in zip(outs[0], outs[1], strict=True):
            np.testing.assert_array_equal(got, want)


class TestSupportHelpers:
    def test_transpose_positions_and_on_support_match_a_key_search(self) -> None:
        """The mirror position of each entry and the weights laid on a wider pattern equal
        what sorting (row, column) keys and searching them gives."""
        rng = np.random.default_rng(4)
        n = 60
        inner = symmetric_pattern(n, 0.1, 1)
        pattern = sp.csr_matrix((inner | symmetric_pattern(n, 0.1, 2)).astype(np.float64))
        pattern.sort_indices()
        indptr, idx = pattern.indptr.astype(np.int64), pattern.indices
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        keys = rows * n + idx
        np.testing.assert_array_equal(
            transpose_positions(indptr, idx), np.searchsorted(keys, idx * n + rows)
        )
        w = np.triu(np.where(inner, rng.normal(size=(n, n)), 0.0), 1)
        weights = sp.csr_matrix(w + w.T)
        weights.sort_indices()
        want = np.zeros(len(keys))
        w_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(weights.indptr))
        want[np.searchsorted(keys, w_rows * n + weights.indices)] = weights.data
        np.testing.assert_array_equal(on_support(indptr, idx, weights), want)


class TestQuadraticForms:
    @pytest.mark.parametrize("density", [0.02, 0.6])
    def test_equals_the_dense_product(self, density: float) -> None:
        """s^T W s per row, by looking actives up in long rows (sparse states) or walking the
        rows (dense states), equals the dense product, with unsorted weights too."""
        rng = np.random.default_rng(5)
        n = 300
        dense_w = np.where(symmetric_pattern(n, 0.3, 6), rng.normal(size=(n, n)), 0.0)
        dense_w = np.triu(dense_w, 1) + np.triu(dense_w, 1).T
        dense_s = (rng.random((20, n)) < density).astype(np.float64)
        want = np.einsum("ri,ij,rj->r", dense_s, dense_w, dense_s)
        w, s = sp.csr_matrix(dense_w), sp.csr_matrix(dense_s)
        np.testing.assert_allclose(quadratic_forms(w, s), want, rtol=1e-12, atol=1e-9)
        order = np.concatenate(
            [np.arange(w.indptr[i + 1] - 1, w.indptr[i] - 1, -1) for i in range(n)]
        )
        unsorted = sp.csr_matrix((w.data[order], w.indices[order], w.indptr), shape=(n, n))
        unsorted.has_sorted_indices = False
        np.testing.assert_allclose(quadratic_forms(unsorted, s), want, rtol=1e-12, atol=1e-9)


class TestLeaveOneOutPhi:
    def test_equals_the_vote_of_the_others_row_by_row(self) -> None:
        """Each member's phi with its group's majority vote without it (weights 1-3) equals a
        dense recomputation; members alone in their group get inf."""
        rng = np.random.default_rng(8)
        n, e = 80, 120
        x = sp.csr_matrix((rng.random((e, n)) < 0.3).astype(np.float64))
        w = rng.integers(1, 4, size=e).astype(np.float64)
        labels = rng.integers(0, 30, size=e)
        rows = np.argsort(labels, kind="stable").astype(np.int64)
        got = leave_one_out_phi(x, w, rows, labels[rows], n)
        dense = x.toarray()
        for t, i in enumerate(rows):
            others = [j for j in rows if labels[j] == labels[i] and j != i]
            if not others:
                assert got[t] == np.inf
                continue
            vote = (w[others] @ dense[others] > 0.5 * w[others].sum()).astype(np.float64)
            want = phi_overlap(sp.csr_matrix(dense[i : i + 1]), sp.csr_matrix(vote[None, :]), n)
            assert got[t] == pytest.approx(float(want[0]), abs=1e-12)
