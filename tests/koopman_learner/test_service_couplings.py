"""Oscillator couplings over real gRPC: a sparse Kuramoto network recovered from the phase
fields (and from the activations alone), announced on a real Redis; synchrony reported as
unidentifiable without changing anything; and the rank rule firing on psi-drift."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from mcp_services.common.event_bus import KCL_COUPLINGS_UPDATED, decode_event
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.domain import simulate_kuramoto
from mcp_services.koopman_learner.domain.kuramoto import Network, random_network
from mcp_services.koopman_learner.domain.synthetic import oscillator_system, simulate
from tests.conftest import SettingsFactory
from tests.koopman_learner.conftest import LearnerFactory, batch, trace_proto

N, DT, RUNS, LENGTH = 20, 0.05, 10, 200
IDS = [f"concept:{i}" for i in range(N)]
NETWORK = random_network(
    N, mean_in_degree=3, coupling_range=(0.1, 0.4), omega_range=(-3.0, 3.0), seed=2
)


def _phases(
    network: Network, runs: int, seed: int, start_spread: float = 2 * np.pi
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    n = network.omega.shape[0]
    return [
        simulate_kuramoto(
            network.couplings,
            network.omega,
            rng.uniform(0, start_spread, n),
            dt=DT,
            steps=LENGTH - 1,
            noise=0.01,
            seed=seed * 100 + run,
        )
        for run in range(runs)
    ]


def _request(phases: list[np.ndarray], with_fields: bool) -> pb.ProcessActivationBatchRequest:
    traces = []
    for theta in phases:
        values = 0.5 + 0.4 * np.sin(theta)
        wrapped = np.angle(np.exp(1j * theta))  # the host sends phases in (-pi, pi]
        traces.append(trace_proto(values, IDS, wrapped if with_fields else None))
    return pb.ProcessActivationBatchRequest(traces=traces)


def _matrix(couplings: pb.OscillatorCouplings) -> np.ndarray:
    index = {cid: i for i, cid in enumerate(IDS)}
    k = np.zeros((N, N))
    for c in couplings.couplings:
        k[index[c.target], index[c.source]] = c.weight
    return k


def _scores(truth: np.ndarray, found: np.ndarray) -> tuple[float, float, float]:
    hits = (truth > 0) & (found > 0)
    precision = hits.sum() / max((found > 0).sum(), 1)
    recall = hits.sum() / (truth > 0).sum()
    worst = float((np.abs(found[hits] - truth[hits]) / truth[hits]).max(initial=0.0))
    return float(precision), float(recall), worst


class TestCouplings:
    def test_a_sparse_network_is_recovered_from_phase_fields_and_announced(
        self, start_learner: LearnerFactory, make_settings: SettingsFactory, redis_url: str
    ) -> None:
        """Support precision and recall >= 0.95, couplings within 10%; CouplingsUpdated sent."""
        client = redis.Redis.from_url(redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(KCL_COUPLINGS_UPDATED)
        settings = make_settings(
            redis={"url": redis_url},
            koopman_learner={"follow_vault": False, "dt_s": DT, "auto_couplings": False},
        )
        learner = start_learner(settings=settings)
        learner.stub.ProcessActivationBatch(_request(_phases(NETWORK, RUNS, seed=1), True))
        reply = learner.stub.UpdateOscillatorCouplings(pb.UpdateOscillatorCouplingsRequest())
        c = reply.couplings
        assert c.status == pb.COUPLING_STATUS_OK
        assert c.phase_source == pb.PHASE_SOURCE_FIELDS
        assert c.oscillator_count == N and c.version == 1
        precision, recall, worst = _scores(NETWORK.couplings, _matrix(c))
        assert precision >= 0.95 and recall >= 0.95 and worst <= 0.10
        weights = [x.weight for x in c.couplings]
        assert weights == sorted(weights, reverse=True)
        assert all(0.001 <= w <= 0.5 for w in weights)
        event = None
        deadline = time.monotonic() + 10
        while event is None and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.5)
            if msg is not None:
                event = decode_event(msg["channel"].decode(), msg["data"])
        assert isinstance(event, events_pb2.CouplingsUpdated)
        assert event.coupling_count == c.coupling_count and event.oscillator_count == N
        stats = learner.stub.GetKclStats(pb.GetKclStatsRequest())
        assert stats.coupling_updates == 1 and stats.coupling_count == c.coupling_count
        limited = learner.stub.UpdateOscillatorCouplings(
            pb.UpdateOscillatorCouplingsRequest(limit=3)
        )
        assert len(limited.couplings.couplings) == 3 and limited.couplings.version == 2
        pubsub.close()
        client.close()

    def test_without_phase_fields_the_analytic_signal_is_used(
        self, start_learner: LearnerFactory
    ) -> None:
        """From activations only, phases come from the Hilbert transform. It needs several
        cycles per trace and cannot tell a negative frequency from a positive one, so this
        network turns at 4..8 rad/s (with +-3 rad/s, as above, precision falls to ~0.5)."""
        network = random_network(
            N, mean_in_degree=3, coupling_range=(0.1, 0.4), omega_range=(4.0, 8.0), seed=2
        )
        learner = start_learner(dt_s=DT)  # auto_couplings: estimated after the refit
        learner.stub.ProcessActivationBatch(_request(_phases(network, RUNS, seed=1), False))
        stats = learner.stub.GetKclStats(pb.GetKclStatsRequest())
        assert stats.coupling_updates == 1
        assert stats.coupling_status == pb.COUPLING_STATUS_OK
        reply = learner.stub.UpdateOscillatorCouplings(pb.UpdateOscillatorCouplingsRequest())
        assert reply.couplings.phase_source == pb.PHASE_SOURCE_ANALYTIC
        precision, recall, worst = _scores(network.couplings, _matrix(reply.couplings))
        assert precision >= 0.95 and recall >= 0.95 and worst <= 0.10

    def test_a_synchronised_trajectory_is_unidentifiable(
        self, start_learner: LearnerFactory
    ) -> None:
        """All-to-all strong coupling locks every phase: said so, nothing stored or counted."""
        couplings = np.full((N, N), 0.5)
        np.fill_diagonal(couplings, 0.0)
        rng = np.random.default_rng(0)
        synced = Network(couplings, 1.0 + rng.uniform(-0.05, 0.05, N))
        runs = [p[:, 50:] for p in _phases(synced, 5, seed=3, start_spread=0.3)]
        learner = start_learner(dt_s=DT)
        learner.stub.ProcessActivationBatch(_request(runs, True))
        reply = learner.stub.UpdateOscillatorCouplings(pb.UpdateOscillatorCouplingsRequest())
        c = reply.couplings
        assert c.status == pb.COUPLING_STATUS_UNIDENTIFIABLE
        assert "synchronised" in c.message
        assert c.coupling_count == 0 and c.version == 0
        stats = learner.stub.GetKclStats(pb.GetKclStatsRequest())
        assert stats.coupling_updates == 0
        assert stats.coupling_status == pb.COUPLING_STATUS_UNIDENTIFIABLE


class TestRankRule:
    FREQUENCIES = (0.2, 0.45, 0.7, 1.0, 1.4, 1.9, 2.5, 3.1)  # 16 eigenvalues
    AMPLITUDES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4)

    def _windows(self, seeds: range) -> list[pb.ProcessActivationBatchRequest]:
        n = 40
        system = oscillator_system(n, self.FREQUENCIES, [-0.02] * 8, DT, seed=3)
        ids = [f"c{i}" for i in range(n)]
        out = []
        for seed in seeds:
            (trace,) = simulate(
                system,
                n_traces=1,
                length=300,
                seed=seed,
                noise=0.03 / 8,  # the drift calibration's SNR (~10), scaled into [0, 1]
                offset=0.5,
                amplitudes=[a / 8 for a in self.AMPLITUDES],
            )
            out.append(batch([np.clip(trace, 0, 1)], ids, force_refit=True))
        return out

    @pytest.mark.parametrize("auto_tune", [True, False])
    def test_drift_above_threshold_raises_the_rank(
        self, start_learner: LearnerFactory, auto_tune: bool
    ) -> None:
        """Rank 6 for 16 oscillating eigenvalues: refits drift > 0.2 rad and the rule asks for
        rank 75; applied with auto_tune (drift then falls to its baseline), else recommended."""
        learner = start_learner(
            dt_s=DT, rank=6, rank_high=75, auto_tune=auto_tune, forgetting_factor=1.0,
            window_snapshots=300, auto_couplings=False,
        )  # fmt: skip
        replies = [learner.stub.ProcessActivationBatch(r).update for r in self._windows(range(5))]
        assert replies[0].psi_drift == 0.0 and not replies[0].rank_raised
        raised = [k for k, r in enumerate(replies) if r.rank_raised]
        assert raised, [r.psi_drift for r in replies]
        first = raised[0]
        assert replies[first].psi_drift > 0.2
        assert all(r.psi_drift <= 0.2 for r in replies[:first])
        stats = learner.stub.GetKclStats(pb.GetKclStatsRequest())
        assert stats.recommended_rank == 75
        if auto_tune:
            assert stats.rank == 75 and replies[first].rank == 75
            # At rank 75 the stationary system's drift is back near its baseline (~0.025).
            assert all(r.psi_drift < 0.1 and r.rank == 75 for r in replies[first + 1 :])
        else:
            assert stats.rank == 6 and all(r.rank == 6 for r in replies)

    def test_a_stationary_system_stays_below_the_threshold(
        self, start_learner: LearnerFactory
    ) -> None:
        learner = start_learner(
            dt_s=DT, rank=50, auto_tune=True, forgetting_factor=1.0, window_snapshots=300,
            auto_couplings=False,
        )  # fmt: skip
        replies = [learner.stub.ProcessActivationBatch(r).update for r in self._windows(range(4))]
        # The calibration of drift.py: ~0.025 rad on this system at rank 50.
        assert all(r.psi_drift < 0.05 for r in replies[1:])
        assert not any(r.rank_raised for r in replies)
        assert learner.stub.GetKclStats(pb.GetKclStatsRequest()).rank == 50
