"""psi-drift: near its baseline when stationary, over 0.2 rad when the rank is too low or the
dynamics change, invariant to the arbitrary scale of modes; the rank rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import (
    DmdModel,
    RankPolicy,
    build_window,
    drift_series,
    fit_dmd,
    mode_angle,
    psi_drift,
)
from mcp_services.koopman_learner.domain.synthetic import LinearSystem, oscillator_system, simulate

N, DT = 40, 0.05
FREQUENCIES = [0.2, 0.45, 0.7, 1.0, 1.4, 1.9, 2.5, 3.1]  # 8 oscillations = 16 eigenvalues
AMPLITUDES = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4]
IDS = [f"c{i}" for i in range(N)]
THRESHOLD = 0.2


def _fits(system: LinearSystem, rank: int, seeds: range) -> list[DmdModel]:
    """One fit per 300-snapshot window (noise 0.03, SNR ~ 10), windows from different starts."""
    models = []
    for seed in seeds:
        traces = simulate(
            system, n_traces=1, length=300, seed=seed, noise=0.03, amplitudes=AMPLITUDES
        )
        models.append(fit_dmd(build_window(traces, IDS, active_threshold=-np.inf), DT, rank=rank))
    return models


STATIONARY = oscillator_system(N, FREQUENCIES, [-0.02] * 8, DT, seed=3)


class TestStationary:
    def test_drift_stays_at_its_baseline_far_below_the_threshold(self) -> None:
        """Successive fits of a stationary system drift < 0.05 rad (calibration: ~0.025)."""
        drifts = drift_series(_fits(STATIONARY, 50, range(10, 16)))
        assert drifts.shape == (5,)
        assert float(np.max(drifts)) < 0.05
        assert float(np.max(drifts)) < THRESHOLD / 4

    def test_a_model_has_zero_drift_from_itself_under_any_mode_scaling(self) -> None:
        """Multiplying each mode by an arbitrary complex number changes nothing."""
        (model,) = _fits(STATIONARY, 20, range(1, 2))
        rng = np.random.default_rng(0)
        factors = rng.uniform(0.1, 10, model.rank) * np.exp(2j * np.pi * rng.random(model.rank))
        scaled = replace(model, modes=model.modes * factors)
        assert psi_drift(model, scaled).psi_drift < 1e-7

    def test_concepts_are_aligned_by_id(self) -> None:
        """Reordering the concepts of a fit is no drift."""
        (model,) = _fits(STATIONARY, 20, range(1, 2))
        order = np.random.default_rng(1).permutation(N)
        shuffled = replace(
            model, concept_ids=tuple(IDS[i] for i in order), modes=model.modes[order]
        )
        assert psi_drift(model, shuffled).psi_drift < 1e-7


class TestCrossing:
    def test_too_low_a_rank_crosses_the_threshold_and_raises_the_rank(self) -> None:
        """At rank 8 for 16 eigenvalues successive fits drift > 0.2 rad; the rule picks 75."""
        drifts = drift_series(_fits(STATIONARY, 8, range(10, 16)))
        assert float(np.median(drifts)) > THRESHOLD
        decision = RankPolicy(base_rank=8, high_rank=75).next_rank(8, float(drifts[0]))
        assert decision.raised
        assert decision.rank == 75

    def test_changed_mode_shapes_cross_the_threshold(self) -> None:
        """Same frequencies, new concept patterns: matched modes have moved by ~1 rad or more."""
        changed = oscillator_system(N, FREQUENCIES, [-0.02] * 8, DT, seed=4)
        (before,) = _fits(STATIONARY, 50, range(1, 2))
        (after,) = _fits(changed, 50, range(2, 3))
        report = psi_drift(before, after)
        assert report.psi_drift > 1.0
        assert all(m.current_index is not None for m in report.matches)

    def test_changed_frequencies_cross_the_threshold(self) -> None:
        """Frequencies 30% higher: modes leave the eigenvalue gate or rotate, drift > 0.2."""
        faster = oscillator_system(N, [1.3 * f for f in FREQUENCIES], [-0.02] * 8, DT, seed=3)
        (before,) = _fits(STATIONARY, 50, range(1, 2))
        (after,) = _fits(faster, 50, range(2, 3))
        assert psi_drift(before, after).psi_drift > THRESHOLD


class TestModeAngle:
    def test_a_small_phase_shift_reads_as_its_weighted_rms(self) -> None:
        """Shifting half the mode's weight by 0.1 rad reads 0.05 rad (RMS about the mean shift)."""
        phi = np.ones(4, dtype=np.complex128)
        shifted = phi * np.exp(1j * np.array([0.1, 0.1, 0.0, 0.0]))
        angle, phase = mode_angle(phi, shifted)
        assert phase == pytest.approx(0.05, abs=1e-6)
        assert angle == pytest.approx(0.05, abs=1e-3)

    def test_orthogonal_modes_are_pi_over_two_apart(self) -> None:
        """Modes on disjoint concepts have no overlap: the maximum angle."""
        angle, _ = mode_angle(np.array([1.0, 0.0], dtype=complex), np.array([0.0, 1j]))
        assert angle == pytest.approx(np.pi / 2)


class TestRankPolicy:
    def test_below_threshold_keeps_the_rank(self) -> None:
        """0.1 rad is calm: the rank stays at 50."""
        decision = RankPolicy().next_rank(50, 0.1)
        assert (decision.rank, decision.raised) == (50, False)

    def test_above_threshold_raises_to_rank_high(self) -> None:
        """0.25 rad > 0.2: the rank goes to 75."""
        decision = RankPolicy().next_rank(50, 0.25)
        assert (decision.rank, decision.raised) == (75, True)

    def test_the_raise_is_sticky_and_not_repeated(self) -> None:
        """Already at 75, more drift does not raise again, calm does not lower."""
        policy = RankPolicy()
        assert policy.next_rank(75, 0.5).raised is False
        assert policy.next_rank(75, 0.0).rank == 75

    def test_high_rank_below_base_rank_is_rejected(self) -> None:
        """A policy that would lower the rank on drift is a configuration error."""
        with pytest.raises(ValueError, match="high_rank"):
            RankPolicy(base_rank=50, high_rank=40)

    def test_fits_with_different_dt_cannot_be_compared(self) -> None:
        """psi-drift between fits at different sampling intervals is refused."""
        (model,) = _fits(STATIONARY, 10, range(1, 2))
        with pytest.raises(ValueError, match="different dt"):
            psi_drift(model, replace(model, dt=0.1))
