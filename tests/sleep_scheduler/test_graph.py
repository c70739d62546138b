"""Unit tests of the concept index, activations, graph and annealing."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_services.sleep_scheduler.domain import (
    AnnealSchedule,
    ConceptActivation,
    ConceptGraph,
    ConceptIndex,
    settle,
    states_matrix,
)
from mcp_services.sleep_scheduler.domain.activations import pm1_to_states, states_to_pm1


def _random_graph(n: int, seed: int, density: float = 0.3) -> ConceptGraph:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, n)) * (rng.random((n, n)) < density)
    w = np.triu(w, 1)
    w = w + w.T
    return ConceptGraph(ConceptIndex.of_size(n), sp.csr_matrix(w), rng.normal(size=n) * 0.3)


class TestConceptIndex:
    def test_extended_appends_only_new_ids_in_first_seen_order(self) -> None:
        """Extending keeps old positions and appends unseen ids once each."""
        idx = ConceptIndex(("a", "b")).extended(["b", "c", "a", "d", "c"])
        assert idx.ids == ("a", "b", "c", "d")
        assert idx.position("c") == 2

    def test_extended_returns_self_when_nothing_is_new(self) -> None:
        """An extension with known ids returns the same object, so callers can skip a resize."""
        idx = ConceptIndex(("a",))
        assert idx.extended(["a"]) is idx

    def test_repeated_id_is_rejected(self) -> None:
        """A repeated id raises ValueError naming it."""
        with pytest.raises(ValueError, match="repeats 'a'"):
            ConceptIndex(("a", "a"))


class TestActivations:
    def test_only_strength_above_half_is_active(self) -> None:
        """Strength > 0.5 counts as active; exactly 0.5 does not."""
        act = ConceptActivation(("x", "y", "z"), (0.9, 0.5, 0.51))
        assert act.active_ids() == ("x", "z")

    def test_strength_outside_unit_interval_is_rejected(self) -> None:
        """A strength above 1 raises ValueError that says how to fix it."""
        with pytest.raises(ValueError, match="clip"):
            ConceptActivation(("x",), (1.5,))

    def test_states_matrix_drops_unknown_concepts(self) -> None:
        """Concepts outside the index contribute nothing to the state matrix."""
        idx = ConceptIndex(("a", "b", "c"))
        s = states_matrix([ConceptActivation.of_active(["c", "zzz", "a"])], idx)
        assert s.toarray().tolist() == [[1.0, 0.0, 1.0]]

    def test_pm1_mapping_round_trips(self) -> None:
        """+1 maps to active and -1 to absent, and back."""
        xi = np.array([[1, -1, 1, -1]])
        assert np.array_equal(states_to_pm1(pm1_to_states(xi)), xi)


class TestConceptGraph:
    def test_asymmetric_weights_are_rejected(self) -> None:
        """A non-symmetric W raises ValueError that names the fix."""
        w = sp.csr_matrix(np.array([[0.0, 1.0], [0.0, 0.0]]))
        with pytest.raises(ValueError, match="symmetric"):
            ConceptGraph(ConceptIndex.of_size(2), w, np.zeros(2))

    def test_energy_matches_the_dense_formula(self) -> None:
        """energy() equals -1/2 s^T W s - b^T s computed densely."""
        g = _random_graph(30, seed=1)
        s = (np.random.default_rng(2).random((5, 30)) < 0.4).astype(float)
        w = g.weights.toarray()
        expected = -0.5 * np.einsum("bi,ij,bj->b", s, w, s) - s @ g.biases
        assert np.allclose(g.energy(sp.csr_matrix(s)), expected)

    def test_arrays_round_trip(self) -> None:
        """from_arrays(to_arrays()) restores index, weights, biases and version."""
        g = _random_graph(12, seed=3)
        back = ConceptGraph.from_arrays(g.to_arrays())
        assert back.index.ids == g.index.ids
        assert np.allclose(back.weights.toarray(), g.weights.toarray())
        assert np.allclose(back.biases, g.biases)

    def test_resized_keeps_old_weights_and_adds_isolated_concepts(self) -> None:
        """Growing the index pads W and b with zeros."""
        g = _random_graph(5, seed=4)
        big = g.resized(g.index.extended(["new"]))
        assert big.size == 6
        assert np.allclose(big.weights.toarray()[:5, :5], g.weights.toarray())
        assert big.weights[5].nnz == 0 and big.biases[5] == 0.0

    def test_pm1_couplings_give_the_same_fixed_points(self) -> None:
        """A ±1 Hopfield network's stored pattern is a fixed point of the mapped {0, 1} graph."""
        rng = np.random.default_rng(5)
        xi = rng.choice([-1, 1], size=(3, 60))
        j = (xi.T @ xi) / 60.0
        g = ConceptGraph.from_pm1_couplings(ConceptIndex.of_size(60), j)
        res = settle(g, sp.csr_matrix(pm1_to_states(xi)), AnnealSchedule.zero(), rng)
        assert np.array_equal(states_to_pm1(res.states.toarray()), xi)


class TestSettle:
    @settings(max_examples=15, deadline=None)
    @given(seed=st.integers(0, 10_000))
    def test_zero_temperature_settling_never_raises_energy(self, seed: int) -> None:
        """Settling at T = 0 ends at an energy no higher than the start's, and settles."""
        g = _random_graph(40, seed)
        s0 = sp.csr_matrix((np.random.default_rng(seed).random((4, 40)) < 0.5).astype(float))
        res = settle(g, s0, AnnealSchedule.zero(), np.random.default_rng(seed))
        assert res.settled
        assert np.all(g.energy(res.states) <= g.energy(s0) + 1e-9)

    def test_bad_schedule_is_rejected(self) -> None:
        """A decay outside (0, 1) raises ValueError naming the field."""
        with pytest.raises(ValueError, match="decay"):
            AnnealSchedule(decay=1.5)

    def test_annealed_settle_reports_its_sweeps(self) -> None:
        """An anneal from T0 runs more sweeps than a T = 0 settle of the same states."""
        g = _random_graph(40, seed=7)
        s0 = sp.csr_matrix((np.random.default_rng(7).random((4, 40)) < 0.5).astype(float))
        hot = settle(g, s0, AnnealSchedule(t0=2.0), np.random.default_rng(0))
        cold = settle(g, s0, AnnealSchedule.zero(), np.random.default_rng(0))
        assert hot.settled and hot.sweeps > cold.sweeps
