"""Sparsity-promoting mode selection: monotone in strength, finds the true modes, agrees with PyDMD."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import (
    DmdModel,
    SnapshotWindow,
    build_window,
    fit_dmd,
    select_modes,
)
from mcp_services.koopman_learner.domain.arrays import ComplexArray
from mcp_services.koopman_learner.domain.synthetic import (
    LinearSystem,
    oscillator_system,
    simulate,
)

DT = 0.05
N = 60
RANK = 20
# Five oscillations (10 eigenvalues) of falling amplitude, plus 1% noise: the rank-20 fit has
# 10 noise modes to discard.
SYSTEM = oscillator_system(N, [0.3, 0.7, 1.1, 1.7, 2.4], [0, -0.02, 0, -0.05, 0], DT, seed=1)
AMPLITUDES = [1.0, 0.5, 0.25, 0.12, 0.06]
TRUE_MODES = 10


def _window(scale: float = 1.0, n_traces: int = 1) -> SnapshotWindow:
    traces = simulate(
        SYSTEM, n_traces=n_traces, length=400, seed=2, noise=0.005, amplitudes=AMPLITUDES
    )
    ids = [f"c{i}" for i in range(N)]
    return build_window([scale * t for t in traces], ids, active_threshold=-np.inf)


def _near_truth(model: DmdModel, selected: tuple[int, ...], system: LinearSystem) -> int:
    """How many selected eigenvalues lie within 0.01 of a true eigenvalue."""
    found: ComplexArray = model.eigenvalues[list(selected)]
    distance = np.abs(found[:, None] - system.eigenvalues[None, :])
    return int(np.count_nonzero(np.min(distance, axis=1) < 1e-2))


@pytest.fixture(scope="module")
def fitted() -> tuple[DmdModel, SnapshotWindow]:
    window = _window()
    return fit_dmd(window, DT, rank=RANK), window


class TestStrength:
    def test_mode_count_falls_monotonically_as_strength_rises(
        self, fitted: tuple[DmdModel, SnapshotWindow]
    ) -> None:
        """Over strengths 1e-4..1 the number of kept modes never increases and ends at 0."""
        model, window = fitted
        counts = [
            select_modes(model, window, strength=float(s)).n_selected
            for s in [*np.geomspace(1e-4, 0.9, 12), 1.0]
        ]
        assert all(a >= b for a, b in itertools.pairwise(counts)), counts
        assert counts[0] == TRUE_MODES
        assert counts[-1] == 0

    def test_a_suitable_strength_keeps_exactly_the_true_modes(
        self, fitted: tuple[DmdModel, SnapshotWindow]
    ) -> None:
        """At strength 0.01 the 10 kept modes are the system's, and the 10 noise modes go."""
        model, window = fitted
        chosen = select_modes(model, window, strength=0.01)
        assert chosen.n_selected == TRUE_MODES
        assert _near_truth(model, chosen.selected, SYSTEM) == TRUE_MODES

    def test_reconstruction_error_stays_bounded(
        self, fitted: tuple[DmdModel, SnapshotWindow]
    ) -> None:
        """Dropping the noise modes costs < 1% extra error; the error grows as modes go."""
        model, window = fitted
        chosen = select_modes(model, window, strength=0.01)
        assert chosen.relative_error <= 1.01 * chosen.relative_error_all
        errors = [select_modes(model, window, strength=s).relative_error for s in (0.01, 0.1, 0.5)]
        assert errors == sorted(errors)
        assert errors[-1] < 1.0

    def test_strength_is_scale_free(self) -> None:
        """Multiplying the activations by 1000 keeps the same modes at the same strength."""
        small, large = _window(1.0), _window(1000.0)
        picks = [
            select_modes(fit_dmd(w, DT, rank=RANK), w, strength=0.05).n_selected
            for w in (small, large)
        ]
        assert picks[0] == picks[1] == 6

    def test_polished_amplitudes_match_the_true_amplitudes(
        self, fitted: tuple[DmdModel, SnapshotWindow]
    ) -> None:
        """The refit (unpenalised) amplitude of the strongest oscillation is 1 within 2%."""
        model, window = fitted
        chosen = select_modes(model, window, strength=0.3)
        strongest = float(np.max(chosen.amplitudes))
        assert strongest == pytest.approx(1.0, rel=0.02)

    def test_apply_restricts_the_model_to_the_kept_modes(
        self, fitted: tuple[DmdModel, SnapshotWindow]
    ) -> None:
        """The restricted model has the chosen eigenvalues and the polished amplitudes."""
        model, window = fitted
        chosen = select_modes(model, window, strength=0.3)
        sparse = chosen.apply(model)
        assert sparse.rank == chosen.n_selected
        np.testing.assert_array_equal(sparse.eigenvalues, model.eigenvalues[list(chosen.selected)])


class TestTracesAndCap:
    def test_several_traces_are_selected_jointly(self) -> None:
        """Three traces from different starts still select exactly the true modes."""
        window = _window(n_traces=3)
        model = fit_dmd(window, DT, rank=RANK)
        chosen = select_modes(model, window, strength=0.01)
        assert chosen.trace_amplitudes.shape == (RANK, 3)
        assert _near_truth(model, chosen.selected, SYSTEM) == chosen.n_selected == TRUE_MODES

    def test_max_modes_is_a_hard_cap_that_keeps_pairs_together(
        self, fitted: tuple[DmdModel, SnapshotWindow]
    ) -> None:
        """With max_modes=5 and strength 0 the two strongest pairs survive (4 modes)."""
        model, window = fitted
        chosen = select_modes(model, window, strength=0.0, max_modes=5)
        assert chosen.n_selected == 4
        kept = model.eigenvalues[list(chosen.selected)]
        np.testing.assert_allclose(
            np.sort(np.abs(np.angle(kept))), np.sort(np.abs(np.angle(np.conj(kept))))
        )

    def test_strength_outside_unit_interval_is_rejected(
        self, fitted: tuple[DmdModel, SnapshotWindow]
    ) -> None:
        """Strength is relative to gamma_max, so only [0, 1] makes sense."""
        model, window = fitted
        with pytest.raises(ValueError, match="strength"):
            select_modes(model, window, strength=1.5)


def _proximal_gradient_support(model: DmdModel, window: SnapshotWindow, gamma: float) -> set[int]:
    """Support of Jovanovic's L1 problem by plain proximal gradient: an independent solver."""
    trace = window.traces[0]
    z = model.basis.T @ trace
    vand = model.eigenvalues[:, None] ** np.arange(trace.shape[1])[None, :]
    w = model.eigenvectors
    p = (w.conj().T @ w) * np.conj(vand @ vand.conj().T)
    q = np.conj(np.sum(vand * (z.T @ w).T, axis=1))
    step = 1.0 / (2.0 * float(np.linalg.eigvalsh(p)[-1]))
    b = np.zeros(model.rank, dtype=np.complex128)
    for _ in range(20_000):
        v = b - step * 2.0 * (p @ b - q)
        b = v * np.maximum(0.0, 1.0 - step * gamma / np.maximum(np.abs(v), 1e-300))
    return {int(i) for i in np.flatnonzero(np.abs(b) > 0)}


class TestAgainstReferences:
    @pytest.mark.parametrize("strength", [0.001, 0.01, 0.05, 0.3, 0.5])
    def test_same_support_as_an_independent_proximal_gradient_solver(
        self, fitted: tuple[DmdModel, SnapshotWindow], strength: float
    ) -> None:
        """ADMM's chosen modes equal those of a plain proximal-gradient solve of the same problem."""
        model, window = fitted
        chosen = select_modes(model, window, strength=strength)
        assert set(chosen.selected) == _proximal_gradient_support(model, window, chosen.gamma)

    @pytest.mark.parametrize(("strength", "expected"), [(0.01, 10), (0.05, 6), (0.3, 4), (0.5, 2)])
    def test_same_modes_as_pydmd_spdmd_at_the_same_penalty(
        self, fitted: tuple[DmdModel, SnapshotWindow], strength: float, expected: int
    ) -> None:
        """PyDMD's SpDMD at gamma = strength * gamma_max keeps the same eigenvalues."""
        pydmd = pytest.importorskip("pydmd")
        model, window = fitted
        chosen = select_modes(model, window, strength=strength)
        # rho sets only ADMM's speed, not its optimum. PyDMD stops on absolute tolerances and
        # with its default rho = 1 (or rho = mean diag P, ours) it halts early here, e.g. with 5
        # modes (half a conjugate pair) at strength 0.01; rho = mean diag P / rank converges.
        length = window.traces[0].shape[1]
        powers = np.abs(model.eigenvalues)[:, None] ** (2 * np.arange(length))[None, :]
        rho = float(np.mean(np.sum(powers, axis=1))) / RANK
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = pydmd.SpDMD(
                svd_rank=RANK, gamma=chosen.gamma, rho=rho, exact=False, verbose=False
            ).fit(window.traces[0])
        theirs = np.asarray(reference.eigs)[np.abs(reference.amplitudes) > 0]
        ours = model.eigenvalues[list(chosen.selected)]
        assert chosen.n_selected == theirs.size == expected
        distance = np.abs(ours[:, None] - theirs[None, :])
        assert np.max(np.min(distance, axis=1)) < 1e-8
