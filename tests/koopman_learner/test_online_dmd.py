"""Online DMD: rank-1 updates track the forgetting-weighted batch fit; refits are requested."""

from __future__ import annotations

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import (
    OnlineDmd,
    build_window,
    fit_dmd,
    weighted_operator,
)
from mcp_services.koopman_learner.domain.arrays import FloatArray

N, R, DT = 50, 10, 0.1
IDS = [f"c{i}" for i in range(N)]


def _latent_process(length: int, seed: int) -> FloatArray:
    """x = C z with z_{t+1} = A z_t + noise: rank-R data whose weighted fit depends on rho."""
    rng = np.random.default_rng(seed)
    a = np.zeros((R, R))
    for k, angle in enumerate(rng.uniform(0.1, 1.0, R // 2)):
        c, s = np.cos(angle), np.sin(angle)
        a[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = 0.97 * np.array([[c, -s], [s, c]])
    mixing, _ = np.linalg.qr(rng.standard_normal((N, R)))
    z = np.zeros((R, length))
    z[:, 0] = rng.standard_normal(R)
    for t in range(length - 1):
        z[:, t + 1] = a @ z[:, t] + 0.1 * rng.standard_normal(R)
    return np.asarray(mixing @ z)


def _matched_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.min(np.abs(a[:, None] - b[None, :]), axis=1)))


@pytest.fixture(scope="module")
def stream() -> FloatArray:
    return _latent_process(10_001, seed=0)


class TestStreaming:
    def test_ten_thousand_updates_end_within_1e_6_of_the_weighted_batch_fit(
        self, stream: FloatArray
    ) -> None:
        """After 10k rank-1 updates the operator equals the batch fit of the weighted data."""
        start = build_window([stream[:, :101]], IDS, active_threshold=-np.inf)
        online = OnlineDmd.from_window(fit_dmd(start, DT, rank=R), start, forgetting=0.98)
        assert online.update_trace(stream[:, 100:]) == 9_900
        whole = build_window([stream], IDS, active_threshold=-np.inf)
        batch = fit_dmd(whole, DT, rank=R, forgetting=0.98)
        full_online = online.basis @ online.operator @ online.basis.T
        full_batch = batch.basis @ batch.reduced_operator @ batch.basis.T
        assert np.linalg.norm(full_online - full_batch) <= 1e-6 * np.linalg.norm(full_batch)
        assert _matched_distance(online.eigenvalues(), batch.eigenvalues) < 1e-6

    def test_a_cold_start_forgets_its_prior(self, stream: FloatArray) -> None:
        """Starting from A = 0 and a ridge prior, 10k updates reach the same weighted fit."""
        basis = fit_dmd(
            build_window([stream[:, :200]], IDS, active_threshold=-np.inf), DT, rank=R
        ).basis
        online = OnlineDmd(basis, IDS, DT, forgetting=0.98)
        for t in range(10_000):
            online.update(stream[:, t], stream[:, t + 1])
        x, y = stream[:, :-1], stream[:, 1:]
        reference, _ = weighted_operator(basis, x, y, 0.98)
        assert np.linalg.norm(online.operator - reference) <= 1e-6 * np.linalg.norm(reference)

    def test_model_snapshot_matches_the_batch_model(self, stream: FloatArray) -> None:
        """to_model gives the batch fit's eigenvalues and amplitudes (same definition)."""
        whole = build_window([stream[:, :3001]], IDS, active_threshold=-np.inf)
        batch = fit_dmd(whole, DT, rank=R, forgetting=0.98)
        start = build_window([stream[:, :1001]], IDS, active_threshold=-np.inf)
        online = OnlineDmd.from_window(fit_dmd(start, DT, rank=R), start)
        online.update_trace(stream[:, 1000:3001])
        model = online.to_model()
        assert model.svd_method == "online"
        np.testing.assert_allclose(model.eigenvalues, batch.eigenvalues, atol=1e-8)
        np.testing.assert_allclose(model.amplitudes, batch.amplitudes, rtol=1e-6)

    def test_pairs_are_taken_within_each_trace_only(self, stream: FloatArray) -> None:
        """Two traces fed separately equal a batch over their pairs, without the joining pair."""
        start = build_window([stream[:, :201]], IDS, active_threshold=-np.inf)
        online = OnlineDmd.from_window(fit_dmd(start, DT, rank=R), start, forgetting=1.0)
        first, second = stream[:, 200:400], stream[:, 700:900]
        online.update_trace(first)
        online.update_trace(second)
        window = build_window([stream[:, :201], first, second], IDS, active_threshold=-np.inf)
        x, y = window.pairs()
        reference, _ = weighted_operator(online.basis, x, y, 1.0)
        np.testing.assert_allclose(online.operator, reference, atol=1e-9)


class TestRefit:
    def test_refit_is_requested_after_the_interval(self, stream: FloatArray) -> None:
        """needs_refit turns true after refit_interval updates."""
        start = build_window([stream[:, :101]], IDS, active_threshold=-np.inf)
        online = OnlineDmd.from_window(fit_dmd(start, DT, rank=R), start, refit_interval=50)
        online.update_trace(stream[:, 100:150])
        assert not online.needs_refit
        online.update_trace(stream[:, 149:151])
        assert online.needs_refit

    def test_refit_is_requested_when_the_basis_stops_capturing_the_data(
        self, stream: FloatArray
    ) -> None:
        """Dynamics moving outside span(basis) drop the captured energy and ask for a refit."""
        start = build_window([stream[:, :501]], IDS, active_threshold=-np.inf)
        online = OnlineDmd.from_window(fit_dmd(start, DT, rank=R), start)
        assert online.captured_energy == pytest.approx(1.0)
        elsewhere = _latent_process(200, seed=9)
        online.update_trace(elsewhere)
        assert online.captured_energy < 0.9
        assert online.needs_refit
        refreshed = build_window([elsewhere], IDS, active_threshold=-np.inf)
        restarted = online.restarted(fit_dmd(refreshed, DT, rank=R), refreshed)
        assert not restarted.needs_refit


class TestErrors:
    def test_basis_must_be_orthonormal(self) -> None:
        """A non-orthonormal basis is rejected with the fix."""
        with pytest.raises(ValueError, match="orthonormal"):
            OnlineDmd(np.ones((3, 2)), ["a", "b", "c"], 1.0)

    def test_forgetting_must_lie_in_the_unit_interval(self) -> None:
        """rho > 1 would amplify old data and is rejected."""
        with pytest.raises(ValueError, match="forgetting"):
            OnlineDmd(np.eye(3)[:, :2], ["a", "b", "c"], 1.0, forgetting=1.5)

    def test_update_with_wrong_length_is_rejected(self) -> None:
        """A snapshot must cover every concept."""
        online = OnlineDmd(np.eye(3)[:, :2], ["a", "b", "c"], 1.0)
        with pytest.raises(ValueError, match="x must have length 3"):
            online.update(np.zeros(2), np.zeros(3))
