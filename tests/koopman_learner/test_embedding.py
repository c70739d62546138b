"""Delay embedding, scaling, and ranking modes by significance (domain, no gRPC)."""

from __future__ import annotations

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import (
    build_window,
    describe_modes,
    fit_dmd,
    select_modes,
)
from mcp_services.koopman_learner.domain.embedding import (
    Scaling,
    auto_delays,
    delay_embed,
    lag_id,
)
from mcp_services.koopman_learner.domain.modes import persistence


class TestDelayEmbed:
    def test_rows_are_the_series_shifted_by_each_lag(self) -> None:
        """Column j holds samples j .. j + d - 1, newest first; rows are named by their lag."""
        x = np.arange(6, dtype=float)[None, :]
        out, ids = delay_embed(x, ["a"], 3)
        assert ids == ("a", "a@-1", "a@-2")
        np.testing.assert_array_equal(out, [[2, 3, 4, 5], [1, 2, 3, 4], [0, 1, 2, 3]])

    def test_one_delay_is_the_trace_itself(self) -> None:
        """delays=1 returns the values and ids unchanged."""
        x = np.ones((2, 4))
        out, ids = delay_embed(x, ["a", "b"], 1)
        assert ids == ("a", "b") and out is x

    def test_a_trace_shorter_than_the_delays_is_refused(self) -> None:
        """A trace of 3 samples cannot be embedded with 5 delays; the message says the fix."""
        with pytest.raises(ValueError, match="shorter than delays=5"):
            delay_embed(np.ones((1, 3)), ["a"], 5)

    def test_one_embedded_concept_carries_its_period(self) -> None:
        """A single sinusoid (period 12 samples) with noise: DMD of the embedding finds 12.

        Without embedding the one-concept fit has a single real eigenvalue."""
        rng = np.random.default_rng(3)
        t = np.arange(240)
        x = 0.5 + 0.3 * np.sin(2 * np.pi * t / 12) + 0.02 * rng.standard_normal(t.size)
        plain = fit_dmd(build_window([x[None, :]], ["a"]), 1.0)
        assert plain.rank == 1 and plain.eigenvalues[0].imag == 0
        h, ids = delay_embed(x[None, :], ["a"], 24)
        model = fit_dmd(build_window([h], ids, active_threshold=-1), 1.0)
        modes = describe_modes(model, horizon=h.shape[1])
        top = max((m for m in modes if m.oscillating), key=lambda m: m.significance)
        assert abs(1 / abs(top.frequency_hz) - 12) < 0.12

    def test_lag_names(self) -> None:
        """Lag 0 keeps the concept's id."""
        assert lag_id("sst", 0) == "sst" and lag_id("sst", 4) == "sst@-4"


class TestAutoDelays:
    @pytest.mark.parametrize(
        ("samples", "concepts", "expected"),
        [(72, 1, 24), (240, 1, 64), (240, 3, 64), (240, 100, 20), (5, 1, 1), (6, 1, 2)],
    )
    def test_a_third_of_the_samples_within_the_caps(
        self, samples: int, concepts: int, expected: int
    ) -> None:
        """T // 3, capped at max_delays (64) and at max_rows (2000) / concepts; 1 below 2."""
        assert auto_delays(samples, concepts, 64, 2000) == expected


class TestScaling:
    def test_minmax_maps_the_first_batch_onto_0_1(self) -> None:
        """Fitted on [100, 300]: 100 -> 0, 300 -> 1, 500 -> 2 (later values are not clipped)."""
        s = Scaling("minmax").extended(np.array([[100.0, 200.0, 300.0]]), ["a"])
        assert (s.offsets, s.scales) == ((100.0,), (200.0,))
        np.testing.assert_allclose(s.apply(np.array([[100.0, 300.0, 500.0]]), ["a"]), [[0, 1, 2]])

    def test_robust_maps_the_5th_and_95th_percentiles_to_0_1_and_0_9(self) -> None:
        """An outlier does not stretch the scale: the bulk still spans 0.1 .. 0.9."""
        x = np.concatenate([np.linspace(0, 10, 101), [1000.0]])[None, :]
        s = Scaling("robust").extended(x, ["a"])
        low, high = np.percentile(x[0], [5, 95])
        np.testing.assert_allclose(s.apply(np.array([[low, high]]), ["a"]), [[0.1, 0.9]])

    def test_a_constant_concept_sits_at_the_middle(self) -> None:
        """No spread: shifted to 0.5 with unit scale (never a division by zero)."""
        s = Scaling("minmax").extended(np.full((1, 5), 7.0), ["a"])
        np.testing.assert_allclose(s.apply(np.full((1, 2), 7.0), ["a"]), [[0.5, 0.5]])

    def test_scaling_changes_no_eigenvalue(self) -> None:
        """An affine map per concept leaves the DMD frequencies of the embedding as they were."""
        t = np.arange(200)
        raw = 1000 + 250 * np.sin(2 * np.pi * t / 20)
        s = Scaling("minmax").extended(raw[None, :], ["a"])
        freqs = []
        for x in (raw[None, :] / 2000, s.apply(raw[None, :], ["a"])):
            h, ids = delay_embed(x, ["a"], 10)
            model = fit_dmd(build_window([h], ids, active_threshold=-1), 1.0)
            freqs.append(np.sort(np.abs(model.frequencies_hz[np.abs(model.eigenvalues) > 0.9])))
        np.testing.assert_allclose(freqs[0], freqs[1], atol=1e-9)


class TestSignificance:
    def test_persistence_is_the_mean_share_kept_over_the_horizon(self) -> None:
        """|lambda| = 1 keeps 1; 0.9 over 10 samples keeps (1 - 0.9^10) / (10 * 0.1); 1/0.9 the
        same (growth is as unrepresentative as decay)."""
        p = persistence([1.0, 0.9, 1 / 0.9, 0.0], 10)
        np.testing.assert_allclose(p, [1.0, (1 - 0.9**10) / 1.0, (1 - 0.9**10) / 1.0, 0.1])

    def test_the_issues_spurious_mode_is_not_significant(self) -> None:
        """A 20.7-year mode decaying at 0.19/yr over a 300-year window keeps 0.018 (< 0.2); the
        10.8-year cycle keeps 1."""
        lam = [np.exp(-0.19 + 2j * np.pi / 20.7), np.exp(2j * np.pi / 10.8)]
        p = persistence(lam, 300)
        rho = np.exp(-0.19)
        assert p[0] == pytest.approx((1 - rho**300) / (300 * (1 - rho))) and p[0] < 0.02
        assert p[1] == 1.0

    def test_a_large_damped_transient_ranks_below_a_lasting_cycle(self) -> None:
        """A transient starting 3x larger than a steady cycle (period 25) but decaying with
        time constant 8 samples: by amplitude it leads, by significance the cycle leads and the
        transient is not significant."""
        t = np.arange(400)
        x = (
            0.5
            + 0.1 * np.sin(2 * np.pi * t / 25)
            + 0.3 * np.exp(-t / 8) * np.cos(2 * np.pi * t / 60)
        )
        h, ids = delay_embed(x[None, :], ["a"], 40)
        window = build_window([h], ids, active_threshold=-1)
        fitted = fit_dmd(window, 1.0, rank=8)
        # As the service serves it: amplitudes refit on the window, i.e. each mode's size at the
        # window's start, where the transient is at its largest.
        model = select_modes(fitted, window, strength=0.0).apply(fitted)
        modes = [m for m in describe_modes(model, horizon=h.shape[1]) if m.oscillating]
        by_amplitude = max(modes, key=lambda m: m.amplitude)
        by_significance = max(modes, key=lambda m: m.significance)
        assert abs(1 / abs(by_amplitude.frequency_hz) - 60) < 1
        assert not by_amplitude.significant
        assert abs(1 / abs(by_significance.frequency_hz) - 25) < 0.01
        assert by_significance.significant
