"""Phases from phase fields and from the analytic signal of activations."""

from __future__ import annotations

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import phases_from_activations, phases_from_fields


class TestFields:
    def test_wrapped_fields_are_unwrapped_per_trace(self) -> None:
        """Phases given modulo 2 pi come back continuous, each trace on its own."""
        t = np.arange(200) * 0.05
        truth = np.stack([2.0 * t, -1.5 * t + 1.0])
        wrapped = np.angle(np.exp(1j * truth))
        first, second = phases_from_fields([wrapped, wrapped[:, :50]])
        np.testing.assert_allclose(np.diff(first, axis=1), np.diff(truth, axis=1), atol=1e-12)
        assert second.shape == (2, 50)

    def test_traces_with_different_rows_are_rejected(self) -> None:
        """All traces must describe the same concepts."""
        with pytest.raises(ValueError, match="same rows"):
            phases_from_fields([np.zeros((2, 5)), np.zeros((3, 5))])


class TestAnalyticSignal:
    def test_phase_of_a_chirping_activation_is_recovered(self) -> None:
        """0.5 + 0.4 cos(theta(t)) with a slowly varying frequency gives theta within 0.05 rad."""
        t = np.arange(1000) * 0.02
        theta = np.stack([3.0 * t + 0.2 * np.sin(0.5 * t), 4.5 * t + 1.0])
        activations = 0.5 + 0.4 * np.cos(theta)
        result = phases_from_activations([activations], trim=0.1)
        (phases,) = result.phases
        kept = theta[:, 100:900]
        error = np.angle(np.exp(1j * (phases - kept)))
        assert phases.shape == (2, 800)
        assert float(np.sqrt(np.mean(error**2))) < 0.05
        np.testing.assert_allclose(result.envelope, 0.4, rtol=0.02)

    def test_a_flat_concept_is_not_oscillating(self) -> None:
        """A constant series has no phase and is flagged."""
        t = np.arange(400) * 0.02
        activations = np.stack([0.5 + 0.4 * np.cos(3 * t), np.full(t.shape, 0.7)])
        result = phases_from_activations([activations])
        assert result.oscillating.tolist() == [True, False]

    def test_trimming_everything_is_rejected(self) -> None:
        """A trace too short for the trim is an input error that says what to change."""
        with pytest.raises(ValueError, match="lower trim"):
            phases_from_activations([np.random.default_rng(0).random((2, 3))], trim=0.45)
