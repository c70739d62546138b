"""Pruning per namespace: a namespace's pruning reads, commits, backs up and rolls back that
namespace's graph only, and leaves every other namespace's graph and backups as they were."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from mcp_services.common.event_bus import CONSOLIDATION_COMPLETED, decode_event
from mcp_services.common.server import ServerThread
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sparse_pruner.server import SparsePrunerService, backup_root
from tests.sleep_scheduler.conftest import PairFactory, start_pair, start_scheduler
from tests.sleep_scheduler.test_namespaces import consolidate, episodes, latest, put

from .conftest import Fleet, chunks_of, planted_snapshot

__all__ = ["start_pair", "start_scheduler"]  # the scheduler's fixtures, used here

BOB = (("x-tori-namespace", "bob"),)


def versions(fleet: Fleet, md: tuple[tuple[str, str], ...] = ()) -> list[int]:
    listed = fleet.sched.ListGraphVersions(sleep_pb2.ListGraphVersionsRequest(), metadata=md)
    return [int(v.header.version) for v in listed.versions]


class TestPrunerPerNamespace:
    def test_bobs_prune_changes_bobs_graph_only(self, fleet: Fleet) -> None:
        """With a graph in default and another in bob, bob's TriggerPruning commits bob's
        version 2 with a backup under backups/namespaces/bob; default keeps version 1 alone and
        no backup; bob's rollback restores bob's graph only."""
        mine, _ = planted_snapshot(80, 0.1, seed=7)
        fleet.seed(mine)
        bobs, _ = planted_snapshot(80, 0.1, seed=8)
        fleet.sched.CommitGraph(chunks_of(bobs, 0), metadata=BOB)
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest(), metadata=BOB)
        assert job.state == pruner_pb2.JOB_STATE_SUCCEEDED, job.message
        assert (job.base_version, job.committed_version) == (1, 2)
        assert versions(fleet, BOB) == [2, 1] and versions(fleet) == [1]
        assert not fleet.stub.ListBackups(pruner_pb2.ListBackupsRequest()).backups
        backups = fleet.stub.ListBackups(pruner_pb2.ListBackupsRequest(), metadata=BOB).backups
        assert [b.backup_id for b in backups] == [job.backup_id]
        assert any(Path(backup_root(fleet.settings), "namespaces", "bob").iterdir())
        back = fleet.stub.RollbackPruning(pruner_pb2.RollbackPruningRequest(), metadata=BOB)
        assert back.restored_version == 3
        assert versions(fleet) == [1]


class TestPruneAfterConsolidationPerNamespace:
    def test_a_consolidation_in_bob_prunes_bobs_graph_only(self, start_pair: PairFactory) -> None:
        """With a real vault, scheduler, pruner and Redis: bob's consolidation publishes
        consolidation.completed naming bob, and the pruner runs a 'consolidation' job on bob's
        graph (version 1 -> pruned version 2, backed up in bob); the default graph, jobs and
        backups stay untouched."""
        pair = start_pair()
        put(pair, episodes(1), "concept:mine-", ())
        consolidate(pair, ())  # before the pruner runs: the default's graph stays version 1
        settings = pair.sched.settings
        pruner = ServerThread("sparse-pruner", "sparse_pruner", SparsePrunerService, settings)
        pruner.start()
        client = redis.Redis.from_url(pair.redis_url)
        sub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        sub.subscribe(CONSOLIDATION_COMPLETED)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{pruner.running.grpc_port}") as ch:
                stub = pruner_pb2_grpc.SparsePrunerStub(ch)
                _wait_subscribed(client, CONSOLIDATION_COMPLETED, subscribers=2)
                put(pair, episodes(2), "concept:bob-", BOB)
                consolidate(pair, BOB)
                event = _next_event(sub)
                assert event.namespace == "bob" and event.graph_version == 1
                job = _wait_job(stub, BOB)
                assert job.trigger == "consolidation" and job.base_version == 1
                assert job.state == pruner_pb2.JOB_STATE_SUCCEEDED, job.message
                assert job.committed_version == 2 and job.edges_after < job.edges_before
                assert latest(pair, BOB).meta.author == "pruner"
                backups = stub.ListBackups(pruner_pb2.ListBackupsRequest(), metadata=BOB)
                assert [b.backup_id for b in backups.backups] == [job.backup_id]
                assert latest(pair).meta.version == 1
                assert latest(pair).meta.author == "consolidation"
                assert not stub.ListBackups(pruner_pb2.ListBackupsRequest()).backups
                with pytest.raises(grpc.RpcError) as none:
                    stub.GetPruningStatus(pruner_pb2.GetPruningStatusRequest())
                assert none.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            sub.close()
            client.close()
            pruner.stop()


def _wait_subscribed(client: redis.Redis, channel: str, subscribers: int) -> None:
    deadline = time.monotonic() + 10
    while client.pubsub_numsub(channel)[0][1] < subscribers:
        assert time.monotonic() < deadline, f"nobody subscribed to {channel}"
        time.sleep(0.02)


def _next_event(sub: Any) -> events_pb2.ConsolidationCompleted:
    deadline = time.monotonic() + 10
    while (msg := sub.get_message(timeout=0.2)) is None:
        assert time.monotonic() < deadline, "no consolidation.completed event"
    event = decode_event(CONSOLIDATION_COMPLETED, msg["data"])
    assert isinstance(event, events_pb2.ConsolidationCompleted)
    return event


def _wait_job(
    stub: pruner_pb2_grpc.SparsePrunerStub, md: tuple[tuple[str, str], ...]
) -> pruner_pb2.PruningJob:
    """The namespace's latest pruning job once it has finished."""
    deadline = time.monotonic() + 60
    while True:
        try:
            job: pruner_pb2.PruningJob = stub.GetPruningStatus(
                pruner_pb2.GetPruningStatusRequest(), metadata=md
            )
            if job.state not in (pruner_pb2.JOB_STATE_PENDING, pruner_pb2.JOB_STATE_RUNNING):
                return job
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: no job yet
                raise
        assert time.monotonic() < deadline, "no pruning job ran in the namespace"
        time.sleep(0.05)
