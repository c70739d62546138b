"""Pruning per namespace: a namespace's pruning reads, commits, backs up and rolls back that
namespace's graph only, and leaves every other namespace's graph and backups as they were."""

from __future__ import annotations

from pathlib import Path

from mcp_services.gen.tori.pruner.v1 import pruner_pb2
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sparse_pruner.server import backup_root

from .conftest import Fleet, chunks_of, planted_snapshot

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
