"""The learner follows a real vault: episode.stored on a real Redis triggers a Scan from the
persisted cursor, a lost event only delays (the poll catches up), a restart resumes from the
cursor, activation-only episodes of one source form a stream, and updates are announced."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from mcp_services.common.event_bus import EPISODE_STORED, KCL_MODES_UPDATED, decode_event
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vpb
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.koopman_learner.domain.synthetic import oscillator_system, simulate
from tests.conftest import SettingsFactory
from tests.episodic_vault.conftest import Vault, VaultFactory
from tests.koopman_learner.conftest import Learner, LearnerFactory, stop

DT = 0.1
N = 10
IDS = [f"concept:{i}" for i in range(N)]
SYSTEM = oscillator_system(N, [0.4, 1.1], [-0.05, -0.1], DT, seed=11)
TRUE_EIGENVALUES = np.concatenate([SYSTEM.eigenvalues, [1.0]])
BASE_S = int(time.time()) - 3600


def _trace_episode(
    i: int, values: np.ndarray, ids: Sequence[str] = IDS, name: str = "trace"
) -> vpb.PutEpisodeRequest:
    ts = Timestamp(seconds=BASE_S + 60 * i)
    frames = [
        vpb.Frame(
            offset_ms=round(t * DT * 1000),
            activation=vpb.ConceptActivation(concept_ids=ids, strengths=values[:, t].tolist()),
        )
        for t in range(values.shape[1])
    ]
    return vpb.PutEpisodeRequest(
        episode=vpb.Episode(
            id=f"{name}-{i}", timestamp=ts, source=vpb.Source(type="t"), trace=frames
        )
    )


def _put_traces(vault: Vault, first: int, count: int) -> None:
    traces = simulate(
        SYSTEM, n_traces=count, length=60, seed=first, offset=0.5, amplitudes=[0.1, 0.1]
    )
    reply = vault.stub.PutEpisodes(
        iter([_trace_episode(first + k, t) for k, t in enumerate(traces)])
    )
    assert reply.created == count


def _wait(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _caught_up(learner: Learner, vault: Vault) -> Callable[[], bool]:
    def check() -> bool:
        last = vault.stub.GetStats(vpb.GetStatsRequest()).last_seq
        cursor = learner.stub.GetProcessingStatus(pb.GetProcessingStatusRequest()).cursor
        return bool(cursor == last)

    return check


@pytest.fixture
def vault(start_vault: VaultFactory, redis_url: str) -> Vault:
    return start_vault(vault={"backend": "memory", "embedding_dim": 0}, redis={"url": redis_url})


@pytest.fixture
def pubsub(redis_url: str) -> Iterator[redis.client.PubSub]:
    client = redis.Redis.from_url(redis_url)
    ps = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    ps.subscribe(KCL_MODES_UPDATED)
    yield ps
    ps.close()
    client.close()


def _follower(
    make_settings: SettingsFactory, vault: Vault, redis_url: str, **knobs: object
) -> object:
    return make_settings(
        redis={"url": redis_url},
        koopman_learner={"follow_vault": True, "vault_target": vault.target, **knobs},
    )


class TestFollowing:
    def test_an_event_triggers_learning_and_modes_are_announced(
        self,
        start_learner: LearnerFactory,
        make_settings: SettingsFactory,
        vault: Vault,
        redis_url: str,
        pubsub: redis.client.PubSub,
    ) -> None:
        """With a 60 s poll, only episode.stored can make the learner scan within the test."""
        learner = start_learner(
            settings=_follower(make_settings, vault, redis_url, poll_interval_s=60)
        )
        client = redis.Redis.from_url(redis_url)
        _wait(lambda: int(client.pubsub_numsub(EPISODE_STORED)[0][1]) >= 1)
        _wait(
            lambda: (
                learner.stub.GetProcessingStatus(pb.GetProcessingStatusRequest()).vault_connected
            )
        )
        _put_traces(vault, 0, 3)
        _wait(_caught_up(learner, vault))
        status = learner.stub.GetProcessingStatus(pb.GetProcessingStatusRequest())
        assert status.episodes_processed == 3 and status.traces_processed == 3
        assert status.episodes_behind == 0 and status.following_vault
        modes = learner.stub.GetSpectralModes(pb.GetSpectralModesRequest()).modes
        found = np.array([complex(m.eigenvalue_real, m.eigenvalue_imag) for m in modes])
        # The vault stores strengths as float32: eigenvalues to ~1e-6, not 1e-8.
        gap = np.abs(found[:, None] - TRUE_EIGENVALUES[None, :]).min(axis=0)
        assert float(gap.max()) < 1e-4
        event = None
        deadline = time.monotonic() + 10
        while event is None and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.5)
            if msg is not None:
                event = decode_event(msg["channel"].decode(), msg["data"])
        assert isinstance(event, events_pb2.ModesUpdated)
        assert event.mode_count == len(modes) and event.rank == 50
        assert event.header.source_service == "koopman-learner"
        client.close()

    def test_without_events_the_poll_catches_up(
        self, start_learner: LearnerFactory, make_settings: SettingsFactory, vault: Vault
    ) -> None:
        """No Redis for the learner (every event lost): the periodic re-check still learns."""
        settings = make_settings(
            koopman_learner={
                "follow_vault": True, "vault_target": vault.target, "poll_interval_s": 0.2,
            }
        )  # fmt: skip
        learner = start_learner(settings=settings)
        _put_traces(vault, 0, 2)
        _wait(_caught_up(learner, vault))
        assert learner.stub.GetKclStats(pb.GetKclStatsRequest()).model_ready

    def test_a_restart_resumes_from_the_persisted_cursor(
        self, start_learner: LearnerFactory, make_settings: SettingsFactory, vault: Vault
    ) -> None:
        """Episodes learnt before a restart are not learnt again; those stored while the
        learner was down are learnt after it."""
        settings = make_settings(
            koopman_learner={
                "follow_vault": True, "vault_target": vault.target, "poll_interval_s": 0.2,
            }
        )  # fmt: skip
        learner = start_learner(settings=settings)
        _put_traces(vault, 0, 2)
        _wait(_caught_up(learner, vault))
        stop(learner)
        _put_traces(vault, 10, 3)
        again = start_learner(settings=settings)
        _wait(_caught_up(again, vault))
        status = again.stub.GetProcessingStatus(pb.GetProcessingStatusRequest())
        assert status.episodes_processed == 5 and status.traces_processed == 5
        assert status.cursor == vault.stub.GetStats(vpb.GetStatsRequest()).last_seq

    def test_activation_episodes_of_one_source_form_a_stream(
        self, start_learner: LearnerFactory, make_settings: SettingsFactory, vault: Vault
    ) -> None:
        """70 single activations 100 ms apart: one 64-snapshot trace, 7 snapshots pending (the
        last flushed one starts the next piece); another source's episode is its own stream."""
        settings = make_settings(
            koopman_learner={
                "follow_vault": True, "vault_target": vault.target, "poll_interval_s": 0.2,
            }
        )  # fmt: skip
        learner = start_learner(settings=settings)
        (values,) = simulate(SYSTEM, n_traces=1, length=70, seed=3, offset=0.5)
        requests = []
        for t in range(70):
            ts = Timestamp()
            ts.FromMilliseconds(BASE_S * 1000 + 100 * t)
            requests.append(
                vpb.PutEpisodeRequest(
                    episode=vpb.Episode(
                        id=f"a-{t}",
                        timestamp=ts,
                        source=vpb.Source(type="host", id="s1"),
                        activation=vpb.ConceptActivation(
                            concept_ids=IDS, strengths=np.clip(values[:, t], 0, 1).tolist()
                        ),
                    )
                )
            )
        other = vpb.Episode(
            id="b-0",
            timestamp=Timestamp(seconds=BASE_S),
            source=vpb.Source(type="host", id="s2"),
            activation=vpb.ConceptActivation(concept_ids=["concept:0"], strengths=[0.9]),
        )
        requests.append(vpb.PutEpisodeRequest(episode=other))
        vault.stub.PutEpisodes(iter(requests))
        _wait(_caught_up(learner, vault))
        status = learner.stub.GetProcessingStatus(pb.GetProcessingStatusRequest())
        assert status.episodes_processed == 71
        assert status.traces_processed == 1
        assert status.snapshots_processed == 64
        assert status.pending_stream_snapshots == 7 + 1

    def test_a_source_declared_as_a_stream_is_learnt_at_its_own_clock(
        self, start_learner: LearnerFactory, make_settings: SettingsFactory, vault: Vault
    ) -> None:
        """Stream "sensor/sst" declared with dt 1 month and 24 delays, no data; 130 monthly
        activations of that source in the vault: the stream learns two 64-snapshot pieces and
        its top period is 12 months; the default stream learns none of them, and the cursor
        passes them all."""
        settings = make_settings(
            koopman_learner={
                "follow_vault": True, "vault_target": vault.target, "poll_interval_s": 0.2,
            }
        )  # fmt: skip
        learner = start_learner(settings=settings)
        declared = learner.stub.ProcessActivationBatch(
            pb.ProcessActivationBatchRequest(
                stream="sensor/sst", options=pb.StreamOptions(dt=1, time_unit="month", delays=24)
            )
        )
        assert declared.update.kind == pb.UPDATE_KIND_NONE
        month_s = 365.2425 * 86400 / 12
        start_s = BASE_S - 131 * month_s
        requests = []
        for t in range(130):
            ts = Timestamp()
            ts.FromMilliseconds(round((start_s + t * month_s) * 1000))
            value = 0.5 + 0.3 * np.sin(2 * np.pi * t / 12)
            requests.append(
                vpb.PutEpisodeRequest(
                    episode=vpb.Episode(
                        id=f"sst-{t}", timestamp=ts, source=vpb.Source(type="sensor", id="sst"),
                        activation=vpb.ConceptActivation(concept_ids=["sst"], strengths=[value]),
                    )
                )
            )  # fmt: skip
        vault.stub.PutEpisodes(iter(requests))
        _wait(_caught_up(learner, vault))
        status = learner.stub.GetProcessingStatus(pb.GetProcessingStatusRequest())
        assert status.snapshots_processed == 0 and status.pending_stream_snapshots == 0
        modes = learner.stub.GetSpectralModes(
            pb.GetSpectralModesRequest(
                stream="sensor/sst", oscillating_only=True, collapse_conjugates=True
            )
        )
        assert modes.stream.snapshots_processed == 2 * (64 - 24 + 1)  # embedded columns
        assert modes.time_unit == "month" and modes.modes[0].period == pytest.approx(12, rel=1e-3)

    def test_purged_episodes_do_not_hold_the_cursor_back(
        self, start_learner: LearnerFactory, make_settings: SettingsFactory, vault: Vault
    ) -> None:
        """Episodes deleted before the learner saw them: nothing to learn, no lag left."""
        _put_traces(vault, 0, 2)
        for i in range(2):
            assert vault.stub.DeleteEpisode(vpb.DeleteEpisodeRequest(id=f"trace-{i}")).deleted
        _put_traces(vault, 5, 1)
        assert vault.stub.DeleteEpisode(vpb.DeleteEpisodeRequest(id="trace-5")).deleted
        settings = make_settings(
            koopman_learner={
                "follow_vault": True, "vault_target": vault.target, "poll_interval_s": 0.2,
            }
        )  # fmt: skip
        learner = start_learner(settings=settings)
        _wait(
            lambda: (
                learner.stub.GetProcessingStatus(pb.GetProcessingStatusRequest()).vault_connected
            )
        )
        _wait(_caught_up(learner, vault))
        status = learner.stub.GetProcessingStatus(pb.GetProcessingStatusRequest())
        assert status.episodes_processed == 0 and status.episodes_behind == 0
        assert status.cursor == status.vault_last_seq == 3  # seqs stay taken after a delete
