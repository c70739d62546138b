"""What starts a pruning job: consolidation events, the schedule, the CLI; and auto-tuning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import redis

from mcp_services.common.event_bus import CONSOLIDATION_COMPLETED, GRAPH_PRUNED, new_header
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.gen.tori.pruner.v1 import pruner_pb2

from .conftest import FleetFactory, planted_snapshot


def _wait_subscribed(client: redis.Redis, channel: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while client.pubsub_numsub(channel)[0][1] < 1:
        assert time.monotonic() < deadline, f"nobody subscribed to {channel}"
        time.sleep(0.02)


class TestTriggers:
    """Events, the schedule and the CLI each start a job; a commit announces graph.pruned."""

    def test_consolidation_event_starts_a_job_and_pruned_is_published(
        self, start_fleet: FleetFactory, redis_url: str
    ) -> None:
        """consolidation.completed -> a committed job (trigger 'consolidation') -> graph.pruned."""
        fleet = start_fleet(redis={"url": redis_url})
        graph, _ = planted_snapshot(80, 0.1, seed=11)
        fleet.seed(graph)
        client = redis.Redis.from_url(redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(GRAPH_PRUNED)
        _wait_subscribed(client, CONSOLIDATION_COMPLETED)
        event = events_pb2.ConsolidationCompleted(
            header=new_header("sleep-scheduler"), job_id="c1", graph_version=1
        )
        client.publish(CONSOLIDATION_COMPLETED, event.SerializeToString())
        deadline = time.monotonic() + 30
        message = None
        while message is None:
            assert time.monotonic() < deadline, "no graph.pruned event"
            message = pubsub.get_message(timeout=0.2)
        pruned = events_pb2.GraphPruned.FromString(message["data"])
        job = fleet.stub.GetPruningStatus(pruner_pb2.GetPruningStatusRequest())
        assert job.trigger == "consolidation" and job.state == pruner_pb2.JOB_STATE_SUCCEEDED
        assert pruned.graph_version == job.committed_version == 2
        assert (pruned.edges_before, pruned.edges_after) == (job.edges_before, job.edges_after)
        pubsub.close()
        client.close()

    def test_schedule_runs_jobs_until_turned_off(self, start_fleet: FleetFactory) -> None:
        """SchedulePruning(interval) runs dry-run jobs; interval 0 stops them."""
        fleet = start_fleet()
        graph, _ = planted_snapshot(40, 0.1, seed=12)
        fleet.seed(graph)
        info = fleet.stub.SchedulePruning(
            pruner_pb2.SchedulePruningRequest(interval_s=0.2, dry_run=True)
        )
        assert info.HasField("next_run_at")
        deadline = time.monotonic() + 30
        while fleet.stub.GetPruningStats(pruner_pb2.GetPruningStatsRequest()).runs_total < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        off = fleet.stub.SchedulePruning(pruner_pb2.SchedulePruningRequest(interval_s=0))
        assert not off.HasField("next_run_at")
        job = fleet.stub.GetPruningStatus(pruner_pb2.GetPruningStatusRequest())
        assert job.trigger == "schedule" and job.dry_run
        assert fleet.latest_version() == 1

    def test_prune_once_cli(self, start_fleet: FleetFactory) -> None:
        """`python -m mcp_services.sparse_pruner.prune --once --dry-run` exits 0 with the job."""
        fleet = start_fleet()
        graph, _ = planted_snapshot(40, 0.1, seed=13)
        fleet.seed(graph)
        env = {**os.environ, "TORI_ENV": "test", "OMP_NUM_THREADS": "1"}
        argv = [sys.executable, "-m", "mcp_services.sparse_pruner.prune", "--once", "--dry-run"]
        done = subprocess.run(
            [*argv, "--target", fleet.pruner_target],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)
        assert job["state"] == "JOB_STATE_SUCCEEDED" and job["trigger"] == "rpc"
        assert fleet.latest_version() == 1
        bad = subprocess.run(
            [*argv, "--target", fleet.pruner_target, "--tau", "5"],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )  # fmt: skip
        assert bad.returncode == 2 and "tau" in bad.stderr


class TestAutoTune:
    """Weekly growth above 5% raises tau by x1.5 when auto_tune is on."""

    def test_growth_raises_tau(self, start_fleet: FleetFactory) -> None:
        """A graph whose edge count grew between versions gets tau x1.5 at the next run."""
        fleet = start_fleet(
            sparse_pruner={
                "auto_tune": True,
                "growth_min_window_s": 0.0,
                "auto_tune_cooldown_s": 0.0,
            }
        )
        small, _ = planted_snapshot(60, 0.1, seed=14)
        w = small.weights.tolil()
        w[:, 30:] = 0.0
        w[30:, :] = 0.0
        sparse = type(small)(
            0, small.concept_ids, w.tocsr(), small.biases, small.prototypes, small.support
        )
        fleet.seed(sparse)
        time.sleep(0.05)  # versions must be apart in time for a growth rate
        fleet.seed(small, base_version=1)
        stats = fleet.stub.GetPruningStats(pruner_pb2.GetPruningStatsRequest())
        assert stats.weekly_growth > 0.05
        assert abs(stats.proposed_tau - 0.0015) < 1e-12
        fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest(dry_run=True))
        cfg = fleet.stub.GetConfig(pruner_pb2.GetConfigRequest())
        assert abs(cfg.tau - 0.0015) < 1e-12
