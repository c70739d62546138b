"""Mode summaries, forward prediction and stability."""

from __future__ import annotations

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import (
    build_window,
    describe_modes,
    fit_dmd,
    predict,
    stability,
)
from mcp_services.koopman_learner.domain.synthetic import LinearSystem, oscillator_system, simulate

DT = 0.1


def _two_concept_wave() -> LinearSystem:
    """Concept b lags concept a by a quarter period; b has half a's weight."""
    lam = np.exp((-0.01 + 2j * np.pi * 0.5) * DT)
    phi = np.array([1.0, 0.5 * np.exp(-1j * np.pi / 2), 0.0]) / np.sqrt(1.25)
    return LinearSystem(
        eigenvalues=np.array([lam, np.conj(lam)]),
        modes=np.stack([phi, phi.conj()], axis=1),
        dt=DT,
    )


class TestDescribe:
    def test_dominant_concepts_carry_weights_and_phase_shifts(self) -> None:
        """The leading mode names a then b, weights 0.894/0.447, b shifted by -pi/2 (lagging)."""
        system = _two_concept_wave()
        traces = simulate(system, n_traces=1, length=50, seed=1)
        model = fit_dmd(build_window(traces, ["a", "b", "c"], active_threshold=-1.0), DT)
        summary = describe_modes(model, top_concepts=2)[0]
        first, second = summary.dominant
        assert (first.concept_id, second.concept_id) == ("a", "b")
        assert first.weight == pytest.approx(1 / np.sqrt(1.25), abs=1e-9)
        assert second.weight == pytest.approx(0.5 / np.sqrt(1.25), abs=1e-9)
        assert first.phase_shift == 0.0
        expected = -np.pi / 2 if summary.frequency_hz > 0 else np.pi / 2
        assert second.phase_shift == pytest.approx(expected, abs=1e-9)

    def test_summaries_are_in_physical_units_and_sorted_by_amplitude(self) -> None:
        """Frequency 0.5 Hz, growth -0.01 1/s; amplitudes descend."""
        system = oscillator_system(10, [0.5, 1.5], [-0.01, -0.2], DT, seed=3)
        traces = simulate(system, n_traces=2, length=60, seed=4, amplitudes=[1.0, 0.3])
        model = fit_dmd(build_window(traces, [f"c{i}" for i in range(10)], active_threshold=-1), DT)
        summaries = describe_modes(model, max_modes=3)
        assert len(summaries) == 3
        assert abs(summaries[0].frequency_hz) == pytest.approx(0.5, abs=1e-9)
        assert summaries[0].growth_rate == pytest.approx(-0.01, abs=1e-9)
        amplitudes = [s.amplitude for s in describe_modes(model)]
        assert amplitudes == sorted(amplitudes, reverse=True)


class TestPredict:
    def test_prediction_continues_the_trajectory(self) -> None:
        """From the last snapshot of a fit, 40 further steps match the true system to 1e-8."""
        system = oscillator_system(20, [0.3, 0.8, 1.9], [0.0, -0.1, 0.02], DT, seed=5)
        (trace,) = simulate(system, n_traces=1, length=140, seed=6)
        ids = [f"c{i}" for i in range(20)]
        model = fit_dmd(build_window([trace[:, :100]], ids, active_threshold=-1.0), DT)
        forecast = predict(model, trace[:, 99], 40)
        assert forecast.shape == (20, 41)
        np.testing.assert_allclose(forecast, trace[:, 99:], atol=1e-8)

    def test_state_of_wrong_length_is_rejected(self) -> None:
        """A state must give one value per concept of the model."""
        system = oscillator_system(4, [0.3], [0.0], DT, seed=5)
        traces = simulate(system, n_traces=1, length=20, seed=6)
        model = fit_dmd(build_window(traces, list("abcd"), active_threshold=-1.0), DT)
        with pytest.raises(ValueError, match="state must have length 4"):
            predict(model, np.zeros(3), 5)


class TestStability:
    def test_growing_modes_are_reported_unstable(self) -> None:
        """A mode with growth +0.05 1/s has |lambda| > 1 and is listed; the decaying one is not."""
        system = oscillator_system(10, [0.4, 1.2], [0.05, -0.3], DT, seed=7)
        traces = simulate(system, n_traces=2, length=60, seed=8, amplitudes=[1.0, 0.5])
        model = fit_dmd(build_window(traces, [f"c{i}" for i in range(10)], active_threshold=-1), DT)
        report = stability(model)
        assert not report.stable
        assert len(report.unstable_modes) == 2
        assert report.max_growth_rate == pytest.approx(0.05, abs=1e-8)
        assert all(
            abs(model.frequencies_hz[i]) == pytest.approx(0.4) for i in report.unstable_modes
        )

    def test_decaying_system_is_stable(self) -> None:
        """All |lambda| < 1 gives stable with an empty list."""
        system = oscillator_system(10, [0.4], [-0.05], DT, seed=7)
        traces = simulate(system, n_traces=1, length=60, seed=8)
        model = fit_dmd(build_window(traces, [f"c{i}" for i in range(10)], active_threshold=-1), DT)
        report = stability(model)
        assert report.stable
        assert report.unstable_modes == ()
