"""Kuramoto couplings: sparse support and values recovered, synchrony reported, guards applied."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mcp_services.koopman_learner.domain import (
    CouplingEstimate,
    estimate_couplings,
    phases_from_activations,
    simulate_kuramoto,
)
from mcp_services.koopman_learner.domain.arrays import FloatArray
from mcp_services.koopman_learner.domain.kuramoto import Network, random_network

N, DT, RUNS, LENGTH = 100, 0.05, 10, 200  # 10 random starts x 200 samples = 2000 samples
NOISE = 0.01  # rad / sqrt(s) of phase diffusion
IDS = [f"concept:{i}" for i in range(N)]


def _runs(
    network: Network, runs: int, length: int, seed: int, noise: float = NOISE
) -> list[FloatArray]:
    rng = np.random.default_rng(seed)
    n = network.omega.shape[0]
    return [
        simulate_kuramoto(
            network.couplings,
            network.omega,
            rng.uniform(0, 2 * np.pi, n),
            dt=DT,
            steps=length - 1,
            noise=noise,
            seed=seed * 1000 + run,
        )
        for run in range(runs)
    ]


def _scores(truth: FloatArray, found: FloatArray) -> tuple[float, float, float]:
    """(precision, recall, largest relative error over the true links found)."""
    true_links, found_links = truth > 0, found > 0
    hits = true_links & found_links
    precision = hits.sum() / max(found_links.sum(), 1)
    recall = hits.sum() / true_links.sum()
    relative = np.abs(found[hits] - truth[hits]) / truth[hits]
    return float(precision), float(recall), float(relative.max(initial=0.0))


@pytest.fixture(scope="module")
def network() -> Network:
    # Mean in-degree 5 (about 500 links), couplings 0.1..0.4, natural frequencies spread over
    # +-3 rad/s so that the network does not synchronise.
    return random_network(
        N, mean_in_degree=5, coupling_range=(0.1, 0.4), omega_range=(-3.0, 3.0), seed=1
    )


@pytest.fixture(scope="module")
def runs(network: Network) -> list[FloatArray]:
    return _runs(network, RUNS, LENGTH, seed=5)


@pytest.fixture(scope="module")
def estimate(runs: list[FloatArray]) -> CouplingEstimate:
    return estimate_couplings(runs, IDS, DT)


SMALL_N = 20


@pytest.fixture(scope="module")
def small() -> tuple[Network, list[FloatArray], CouplingEstimate]:
    """A 20-oscillator network for the guard tests (6 runs x 300 samples)."""
    network = random_network(
        SMALL_N, mean_in_degree=3, coupling_range=(0.1, 0.4), omega_range=(-3.0, 3.0), seed=3
    )
    runs = _runs(network, 6, 300, seed=6)
    return network, runs, estimate_couplings(runs, IDS[:SMALL_N], DT)


class TestRecovery:
    def test_support_precision_and_recall_are_at_least_95_percent(
        self, network: Network, estimate: CouplingEstimate
    ) -> None:
        """About 500 true links among 9900 candidates are found with precision and recall >= 0.95."""
        precision, recall, _ = _scores(network.couplings, estimate.couplings)
        assert int(np.count_nonzero(network.couplings)) > 450
        assert precision >= 0.95
        assert recall >= 0.95
        assert estimate.status == "ok"
        assert estimate.solver_converged

    def test_non_zero_couplings_are_within_10_percent(
        self, network: Network, estimate: CouplingEstimate
    ) -> None:
        """Every true link found is estimated within 10% of its value."""
        _, _, worst = _scores(network.couplings, estimate.couplings)
        assert worst <= 0.10

    def test_natural_frequencies_and_noise_are_estimated(
        self, network: Network, estimate: CouplingEstimate
    ) -> None:
        """omega within 0.02 rad/s; the noise level is sigma / sqrt(dt) of the phase diffusion."""
        np.testing.assert_allclose(estimate.natural_frequencies, network.omega, atol=0.02)
        assert float(np.median(estimate.noise_level)) == pytest.approx(NOISE / np.sqrt(DT), rel=0.1)

    def test_links_list_the_strongest_first(self, estimate: CouplingEstimate) -> None:
        """links() names target and source ids in decreasing weight."""
        links = estimate.links()
        assert len(links) == int(np.count_nonzero(estimate.couplings))
        assert links[0].weight == float(estimate.couplings.max())
        assert links[0].target in IDS and links[0].source in IDS

    def test_joining_runs_when_differencing_would_corrupt_the_estimate(
        self, small: tuple[Network, list[FloatArray], CouplingEstimate]
    ) -> None:
        """Separate runs recover K; pasting them into one series creates phase jumps that do not."""
        network, runs, separate = small
        assert _scores(network.couplings, separate.couplings)[2] <= 0.10
        joined = estimate_couplings([np.concatenate(runs, axis=1)], IDS[:SMALL_N], DT)
        precision, recall, worst = _scores(network.couplings, joined.couplings)
        assert min(precision, recall) < 0.95 or worst > 0.10


class TestIdentifiability:
    def test_a_fully_synchronised_run_is_reported_unidentifiable(self) -> None:
        """All-to-all strong coupling locks every phase: no oscillator identifiable, no K guessed."""
        n = 20
        couplings = np.full((n, n), 0.5)
        np.fill_diagonal(couplings, 0.0)
        rng = np.random.default_rng(0)
        synced = Network(couplings, 1.0 + rng.uniform(-0.05, 0.05, n))
        # Start near the common phase and drop the transient, so the record is locked throughout.
        runs = [
            simulate_kuramoto(
                synced.couplings,
                synced.omega,
                rng.uniform(0, 0.3, n),
                dt=DT,
                steps=199,
                noise=NOISE,
                seed=run,
            )[:, 50:]
            for run in range(5)
        ]
        ids = IDS[:n]
        result = estimate_couplings(runs, ids, DT)
        assert result.status == "unidentifiable"
        assert not result.identifiable.any()
        assert not result.couplings.any()
        assert np.isnan(result.natural_frequencies).all()
        previous = replace(result, couplings=np.where(couplings > 0, 0.3, 0.0))
        again = estimate_couplings(runs, ids, DT, previous=previous)
        np.testing.assert_array_equal(again.couplings, previous.couplings)

    def test_a_locked_pair_is_flagged_while_the_rest_is_estimated(self) -> None:
        """Two oscillators locked by a strong mutual link: that link is unidentifiable, status partial."""
        n = 8
        couplings = np.zeros((n, n))
        couplings[0, 1] = couplings[1, 0] = 0.5
        couplings[2, 3] = 0.3
        omega = np.array([1.0, 1.02, -2.0, 0.5, 2.5, -1.0, 1.7, -2.7])
        # Without the locking transient (its first 100 samples) the pair's phase difference is
        # constant; the transient itself would identify the link.
        runs = [run[:, 100:] for run in _runs(Network(couplings, omega), 6, 400, seed=3)]
        result = estimate_couplings(runs, IDS[:n], DT)
        assert result.status == "partial"
        assert result.unidentifiable_links[0, 1] and result.unidentifiable_links[1, 0]
        assert result.couplings[2, 3] == pytest.approx(0.3, rel=0.1)


class TestGuards:
    def test_couplings_are_clamped_to_half(self) -> None:
        """A true coupling of 0.8 is reported as the upper bound 0.5."""
        n = 6
        couplings = np.zeros((n, n))
        couplings[0, 1] = 0.8
        omega = np.array([3.0, -3.0, 1.0, -1.5, 2.0, 0.3])
        result = estimate_couplings(_runs(Network(couplings, omega), 6, 300, seed=4), IDS[:n], DT)
        assert result.couplings[0, 1] == 0.5
        assert result.n_clamped >= 1

    def test_no_coupling_moves_more_than_20_percent_per_update(
        self, small: tuple[Network, list[FloatArray], CouplingEstimate]
    ) -> None:
        """Against a previous estimate at half the values, each link rises by at most 20%."""
        _, runs, estimate = small
        previous = replace(estimate, couplings=estimate.couplings * 0.5)
        updated = estimate_couplings(runs, IDS[:SMALL_N], DT, previous=previous)
        had = previous.couplings > 0
        ratio = updated.couplings[had] / previous.couplings[had]
        assert float(ratio.max()) <= 1.2 + 1e-12
        assert float(ratio.min()) >= 0.8 - 1e-12
        assert updated.n_rate_limited > 0

    def test_a_dropped_link_decays_by_20_percent(
        self, small: tuple[Network, list[FloatArray], CouplingEstimate]
    ) -> None:
        """A previous link absent from the data falls to 80% of its value, not to zero."""
        _, runs, estimate = small
        fake = estimate.couplings.copy()
        target, source = np.argwhere(fake == 0)[1]  # [0] is the diagonal
        fake[target, source] = 0.25
        previous = replace(estimate, couplings=fake)
        updated = estimate_couplings(runs, IDS[:SMALL_N], DT, previous=previous)
        assert updated.couplings[target, source] == pytest.approx(0.2)

    def test_too_few_samples_are_rejected(self) -> None:
        """Fewer rows than candidate links cannot be solved and the message says how many."""
        with pytest.raises(ValueError, match="send at least"):
            estimate_couplings([np.zeros((N, 20))], IDS, DT)


class TestFromActivations:
    def test_couplings_from_hilbert_phases_of_activations(self) -> None:
        """Without phase fields, analytic-signal phases of 0.5 + 0.4 cos(theta) recover K."""
        small = random_network(
            10, mean_in_degree=2, coupling_range=(0.2, 0.4), omega_range=(3.0, 6.0), seed=2
        )
        thetas = _runs(small, 4, 500, seed=1)
        phases = phases_from_activations([0.5 + 0.4 * np.cos(t) for t in thetas], trim=0.1)
        result = estimate_couplings(phases.phases, IDS[:10], DT)
        precision, recall, worst = _scores(small.couplings, result.couplings)
        assert (precision, recall) == (1.0, 1.0)
        assert worst <= 0.10
