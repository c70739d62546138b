"""Consolidation through the service: a real vault, a real scheduler, the session's real Redis."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import redis

from mcp_services.common.event_bus import CONSOLIDATION_COMPLETED, decode_event
from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.adapters.graph_store import StoredGraph
from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex
from mcp_services.sleep_scheduler.domain.planted import planted_pm1, planted_sparse
from mcp_services.sleep_scheduler.domain.quality import recall_pm1
from mcp_services.sleep_scheduler.rpc.codec import stored_of_chunks
from tests.conftest import scrape_until
from tests.fakes.gate import HOLD_GUARD_S
from tests.fakes.vault import HeldSelect
from tests.sleep_scheduler.conftest import Pair, PairFactory

SUCCEEDED = sleep_pb2.JOB_STATE_SUCCEEDED


def read_latest(pair: Pair) -> StoredGraph:
    return stored_of_chunks(pair.sched.stub.ReadGraph(sleep_pb2.ReadGraphRequest()))


def start(pair: Pair, wait: bool = True, **selection: object) -> sleep_pb2.ConsolidationJob:
    req = sleep_pb2.StartConsolidationRequest(
        wait=wait,
        trigger="test",
        selection=sleep_pb2.EpisodeSelection(**selection),  # type: ignore[arg-type]
    )
    job: sleep_pb2.ConsolidationJob = pair.sched.stub.StartConsolidation(req, timeout=120)
    return job


def wait_done(pair: Pair, job_id: str, within: float = 60.0) -> sleep_pb2.ConsolidationJob:
    deadline = time.monotonic() + within
    while True:
        job: sleep_pb2.ConsolidationJob = pair.sched.stub.GetConsolidationStatus(
            sleep_pb2.GetConsolidationStatusRequest(job_id=job_id)
        )
        if job.state >= SUCCEEDED or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], within: float = HOLD_GUARD_S) -> bool:
    """Wait for a state nothing can pass by (not a race: it stays true once true)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def remap(graph: ConceptGraph, n: int) -> ConceptGraph:
    """The graph over concept:0 .. concept:{n-1} in that order (the vault's ids arrive shuffled)."""
    order = graph.index.positions([f"concept:{i}" for i in range(n)])
    w = graph.weights[order][:, order]
    return ConceptGraph(ConceptIndex.of_size(n), w.tocsr(), graph.biases[order])


class TestCycle:
    def test_a_cycle_consolidates_the_vault_into_a_recalling_graph(
        self, start_pair: PairFactory
    ) -> None:
        """Dense planted patterns (N = 200, load 0.3) stored as noisy episodes are recalled >= 95%
        after one synchronous cycle; the episodes are marked and the event is published."""
        pair = start_pair()
        d = planted_pm1(200, 60, seed=3)
        assert pair.put_states(d.episodes) == 300
        sub = redis.Redis.from_url(pair.redis_url).pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True
        )
        sub.subscribe(CONSOLIDATION_COMPLETED)
        job = start(pair)
        assert job.state == SUCCEEDED, job.error
        assert job.episodes_processed == 300 and job.graph_version == 1
        assert job.prototypes == 60 and job.trigger == "test"
        assert job.stability_after >= job.stability_before
        assert job.energy_delta < 0 and job.progress == 1.0 and job.duration_s > 0
        assert pair.unconsolidated() == 0
        stored = read_latest(pair)
        assert stored.meta.author == "consolidation" and stored.prototypes.shape[0] == 60
        assert recall_pm1(remap(stored.graph, 200), d.patterns).recall >= 0.95
        deadline = time.monotonic() + 5
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = sub.get_message(timeout=0.2)
        assert msg is not None, "no consolidation.completed event"
        event = decode_event(CONSOLIDATION_COMPLETED, msg["data"])
        assert isinstance(event, events_pb2.ConsolidationCompleted)
        assert event.job_id == job.job_id and event.graph_version == 1
        assert event.episodes_processed == 300
        text = scrape_until(pair.sched.metrics_url, 'consol_ops_total{outcome="succeeded"')
        assert 'consol_ops_total{outcome="succeeded",trigger="test"} 1.0' in text
        assert "energy_delta " in text and "sleep_graph_version 1.0" in text

    def test_a_cycle_with_nothing_new_commits_nothing(self, start_pair: PairFactory) -> None:
        """With no unconsolidated episodes the job succeeds empty and no version is made."""
        pair = start_pair()
        job = start(pair)
        assert job.state == SUCCEEDED and job.episodes_processed == 0 and job.graph_version == 0
        assert read_latest(pair).meta.version == 0

    def test_episodes_with_nothing_active_stop_counting_as_backlog(
        self, start_pair: PairFactory
    ) -> None:
        """Episodes whose every strength is <= 0.5 give nothing to learn; a cycle marks them
        (with a note) instead of leaving them unconsolidated for ever, whether other episodes
        were learnt in the same cycle or none (then against the latest graph)."""
        pair = start_pair()
        weak = [
            episodic_pb2.PutEpisodeRequest(
                episode=episodic_pb2.Episode(
                    source=episodic_pb2.Source(type="test"),
                    activation=episodic_pb2.ConceptActivation(
                        concept_ids=[f"concept:{i}", f"concept:{i + 1}"], strengths=[0.3, 0.5]
                    ),
                )
            )
            for i in range(6)
        ]
        pair.put_states(planted_sparse(300, 10, seed=1).episodes)
        assert pair.vault.PutEpisodes(iter(weak)).created == 6
        job = start(pair)
        assert job.state == SUCCEEDED and job.graph_version >= 1
        assert any("6 selected episodes had no active concept" in n for n in job.notes)
        assert pair.unconsolidated() == 0
        assert pair.vault.PutEpisodes(iter(weak[:2])).created == 2
        alone = start(pair)
        assert alone.state == SUCCEEDED and alone.graph_version == 0  # nothing new committed
        assert any("2 selected episodes had no active concept" in n for n in alone.notes)
        assert pair.unconsolidated() == 0

    def test_selection_filters_by_tag_energy_and_count(self, start_pair: PairFactory) -> None:
        """Only episodes with the tag and enough energy are taken, at most max_episodes."""
        pair = start_pair()
        d = planted_sparse(300, 10, seed=1)
        pair.put_states(d.episodes[:20], tags=["keep"], energy=0.9)
        pair.put_states(d.episodes[20:30], tags=["keep"], energy=0.1)
        pair.put_states(d.episodes[30:], tags=["other"], energy=0.9)
        job = start(pair, tags=["keep"], min_energy=0.5, max_episodes=15)
        assert job.state == SUCCEEDED and job.episodes_processed == 15
        assert pair.unconsolidated() == 50 - 15
        job = start(pair, min_age_s=3600)
        assert job.episodes_processed == 0

    def test_later_cycles_keep_the_earlier_memories(self, start_pair: PairFactory) -> None:
        """A second batch of assemblies is added without losing the first (prototypes rehearsed)."""
        pair = start_pair()
        d = planted_pm1(120, 20, seed=5)
        first = d.source < 10
        pair.put_states(d.episodes[np.flatnonzero(first)])
        assert start(pair).graph_version == 1
        pair.put_states(d.episodes[np.flatnonzero(~first)])
        job = start(pair)
        assert job.graph_version == 2 and job.base_version == 1
        stored = read_latest(pair)
        assert stored.prototypes.shape[0] == 20
        assert recall_pm1(remap(stored.graph, 120), d.patterns).recall >= 0.95

    def test_ten_cycles_over_the_same_episodes_never_lower_recall(
        self, start_pair: PairFactory
    ) -> None:
        """Ten StartConsolidation cycles, the same planted episodes offered again before each:
        recall of the planted patterns from the committed graph never drops between cycles."""
        pair = start_pair()
        d = planted_pm1(100, 20, seed=9)
        recalls = []
        for cycle in range(10):
            assert pair.put_states(d.episodes) == 100  # server-made ids: new episodes each time
            job = start(pair)
            assert job.state == SUCCEEDED, job.error
            assert job.episodes_processed == 100 and job.graph_version == cycle + 1
            assert job.stability_after >= job.stability_before
            recalls.append(recall_pm1(remap(read_latest(pair).graph, 100), d.patterns).recall)
        assert recalls[0] >= 0.95, recalls
        assert all(b >= a for a, b in itertools.pairwise(recalls)), recalls


class TestJobs:
    def test_a_background_job_can_be_cancelled_and_commits_nothing(
        self, start_pair: PairFactory
    ) -> None:
        """While a job runs a second start is ABORTED; cancel stops the cycle at its next epoch:
        no version, the episodes stay unconsolidated, and the lease is free for the next job.

        Forced, not raced: the job's read of the vault is held (HeldSelect around the real
        client) until the second start has been refused and the cancel has been asked."""
        held = HeldSelect()
        pair = start_pair(wrap_vault=held.around)
        pair.put_states(planted_pm1(200, 60, seed=3).episodes)
        job = start(pair, wait=False)
        assert held.arrived.wait(HOLD_GUARD_S), "the job never read the vault"
        with pytest.raises(grpc.RpcError) as err:
            start(pair, wait=False)
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "another consolidation is running" in str(err.value.details())
        token = pair.sched.service.consolidator.jobs.get(job.job_id).cancel_token
        with ThreadPoolExecutor(1) as pool:
            # CancelConsolidation answers once the job has stopped, so it is sent aside; the read
            # is released only when the cancel has been asked.
            cancelling = pool.submit(
                pair.sched.stub.CancelConsolidation,
                sleep_pb2.CancelConsolidationRequest(job_id=job.job_id),
            )
            assert wait_until(token.is_set), "the cancel never reached the job"
            held.release()
            assert cancelling.result(HOLD_GUARD_S).job_id == job.job_id
        # The cancel answers once the job stopped or after its own 10 s wait (a loaded machine),
        # so the outcome is read when the job has finished.
        stopped = wait_done(pair, job.job_id)
        assert stopped.state == sleep_pb2.JOB_STATE_CANCELLED
        assert "cancelled" in stopped.error
        assert read_latest(pair).meta.version == 0 and pair.unconsolidated() == 300
        assert redis.Redis.from_url(pair.redis_url).get("tori:sleep:consolidation-lease") is None
        assert start(pair).state == SUCCEEDED

    def test_two_replicas_never_consolidate_together(self, start_pair: PairFactory) -> None:
        """A second scheduler sharing the Redis lease is refused while the first one works (held
        in its read of the vault, so it is surely working), and the first one finishes."""
        held = HeldSelect()
        pair = start_pair(wrap_vault=held.around)
        other = start_pair()
        pair.put_states(planted_pm1(200, 60, seed=3).episodes)
        job = start(pair, wait=False)
        assert held.arrived.wait(HOLD_GUARD_S), "the job never read the vault"
        with pytest.raises(grpc.RpcError) as err:
            start(other)
        assert err.value.code() == grpc.StatusCode.ABORTED
        held.release()
        assert wait_done(pair, job.job_id).state == SUCCEEDED

    def test_status_of_unknown_job_and_bad_requests(self, start_pair: PairFactory) -> None:
        """Unknown job ids are NOT_FOUND; malformed selections and configs name the field."""
        pair = start_pair()
        stub = pair.sched.stub
        with pytest.raises(grpc.RpcError) as err:
            stub.GetConsolidationStatus(sleep_pb2.GetConsolidationStatusRequest(job_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        cases: list[tuple[dict[str, object], str]] = [
            ({"max_episodes": -1}, "max_episodes"),
            ({"min_age_s": -1}, "min_age_s"),
            ({"min_age_s": 10, "max_age_s": 5}, "max_age_s"),
            ({"tags": [""]}, "tags"),
        ]
        for sel, needle in cases:
            with pytest.raises(grpc.RpcError) as err:
                start(pair, True, **sel)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in str(err.value.details())
        for fields, cfg, needle in [
            (["t0"], sleep_pb2.SchedulerConfig(t0=-1), "t0"),
            (["bogus"], sleep_pb2.SchedulerConfig(), "bogus"),
            ([], sleep_pb2.SchedulerConfig(), "fields"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.UpdateConfig(sleep_pb2.UpdateConfigRequest(config=cfg, fields=fields))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in str(err.value.details())
        assert stub.GetConfig(sleep_pb2.GetConfigRequest()).t0 == 2.0

    def test_update_config_changes_only_the_named_knobs(self, start_pair: PairFactory) -> None:
        """UpdateConfig sets t0 and leaves eta; the metric follows; the next cycle uses it."""
        pair = start_pair()
        stub = pair.sched.stub
        out = stub.UpdateConfig(
            sleep_pb2.UpdateConfigRequest(
                config=sleep_pb2.SchedulerConfig(t0=1.5, eta=0.5), fields=["t0"]
            )
        )
        assert out.t0 == 1.5 and out.eta == 0.01
        assert "sleep_t0 1.5" in scrape_until(pair.sched.metrics_url, "sleep_t0 1.5")
        pair.put_states(planted_sparse(300, 5, seed=2).episodes)
        assert start(pair).t0 == 1.5

    def test_replay_stats_count_cycles(self, start_pair: PairFactory) -> None:
        """GetReplayStats reports cycles, episodes, the version and recent jobs newest first."""
        pair = start_pair()
        pair.put_states(planted_sparse(300, 5, seed=2).episodes)
        a = start(pair)
        b = start(pair)
        stats = pair.sched.stub.GetReplayStats(sleep_pb2.GetReplayStatsRequest())
        assert stats.cycles_total == 1 and stats.episodes_total == 25
        assert stats.graph_version == 1 and stats.prototype_count == 5
        assert [j.job_id for j in stats.recent] == [b.job_id, a.job_id]


class TestTriggers:
    def test_a_schedule_starts_cycles(self, start_pair: PairFactory) -> None:
        """A recurring schedule starts a cycle with trigger 'schedule'; clearing stops it."""
        pair = start_pair()
        pair.put_states(planted_sparse(300, 5, seed=2).episodes)
        stub = pair.sched.stub
        resp = stub.ScheduleConsolidation(sleep_pb2.ScheduleConsolidationRequest(every_s=0.2))
        assert resp.active and resp.HasField("next_run")
        deadline = time.monotonic() + 30
        while pair.unconsolidated() and time.monotonic() < deadline:
            time.sleep(0.1)
        job = stub.GetConsolidationStatus(sleep_pb2.GetConsolidationStatusRequest())
        assert job.trigger == "schedule" and pair.unconsolidated() == 0
        assert not stub.ScheduleConsolidation(
            sleep_pb2.ScheduleConsolidationRequest(clear=True)
        ).active

    def test_a_bad_cron_is_refused(self, start_pair: PairFactory) -> None:
        """A malformed cron expression is INVALID_ARGUMENT naming cron; a good one is accepted."""
        stub = start_pair().sched.stub
        for bad in ("61 * * * *", "* * *"):
            with pytest.raises(grpc.RpcError) as err:
                stub.ScheduleConsolidation(sleep_pb2.ScheduleConsolidationRequest(cron=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "cron" in str(err.value.details())
        # Intervals whose next run would leave the Timestamp range (found by property tests).
        for every in (float("inf"), 1e12):
            with pytest.raises(grpc.RpcError) as err:
                stub.ScheduleConsolidation(sleep_pb2.ScheduleConsolidationRequest(every_s=every))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "every_s" in str(err.value.details())
        ok = stub.ScheduleConsolidation(sleep_pb2.ScheduleConsolidationRequest(cron="0 3 * * *"))
        assert ok.active and ok.cron == "0 3 * * *"

    def test_vault_pressure_starts_a_cycle(self, start_pair: PairFactory) -> None:
        """Once the vault holds pressure_threshold unconsolidated episodes a cycle starts."""
        pair = start_pair(pressure_threshold=20, pressure_poll_s=0.5)
        pair.put_states(planted_sparse(300, 5, seed=2).episodes)
        deadline = time.monotonic() + 30
        while pair.unconsolidated() and time.monotonic() < deadline:
            time.sleep(0.1)
        job = pair.sched.stub.GetConsolidationStatus(sleep_pb2.GetConsolidationStatusRequest())
        assert job.trigger == "pressure" and job.state == SUCCEEDED
        assert pair.unconsolidated() == 0
