"""The SparsePruner service against a real SleepScheduler: prune, guard, backups, rollback."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.gen.tori.pruner.v1 import pruner_pb2
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot
from tests.fakes.gate import HOLD_GUARD_S
from tests.fakes.scheduler import HeldCommit, HeldRead

from .conftest import Fleet, FleetFactory, planted_snapshot, read_back


def _is_fixed_point(graph: GraphSnapshot, active: np.ndarray) -> bool:
    """{0, 1} dynamics: concept i is on exactly when its field W s + b is positive."""
    s = np.zeros(graph.n_concepts)
    s[active] = 1.0
    h = np.asarray(graph.weights @ s).ravel() + graph.biases
    return bool(np.all((h > 0.0) == (s > 0.0)) and np.all(h != 0.0))


def _support_inside(new: sp.csr_matrix, old: sp.csr_matrix) -> bool:
    a, b = abs(new).sign(), abs(old).sign()
    return bool((a - a.multiply(b)).nnz == 0)


def _assert_identical(a: GraphSnapshot, b: GraphSnapshot) -> None:
    assert a.concept_ids == b.concept_ids
    np.testing.assert_array_equal(a.biases, b.biases)
    for x, y in zip(a.upper_edges(), b.upper_edges(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(a.prototypes) == len(b.prototypes)
    for p, q in zip(a.prototypes, b.prototypes, strict=True):
        np.testing.assert_array_equal(p, q)
    assert a.support == b.support


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


class TestPruning:
    """A run reads the latest version, prunes behind the guard and commits a new version."""

    def test_prunes_and_commits_keeping_the_memory(self, fleet: Fleet) -> None:
        """N = 200, alpha 0.1 at the default tau: >= 80% of edges go, recall >= 0.95, the
        prototypes stay fixed points of the committed {0, 1} graph, backup and metrics follow."""
        graph, _ = planted_snapshot(200, 0.1, seed=0)
        assert fleet.seed(graph) == 1
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest(reason="test"))
        assert job.state == pruner_pb2.JOB_STATE_SUCCEEDED, job.message
        assert (job.base_version, job.committed_version) == (1, 2)
        assert job.edges_after <= 0.2 * job.edges_before
        assert job.quality_after >= 0.95
        assert job.solver.relative_gap <= 1e-6
        assert job.tau_used == pytest.approx(0.001)
        after = read_back(fleet.sched, 2)
        assert after.edge_count == job.edges_after
        assert _support_inside(after.weights, graph.weights)
        assert abs(after.weights - after.weights.T).max() == 0.0
        for old, new in zip(graph.prototypes, after.prototypes, strict=True):
            np.testing.assert_array_equal(old, new)
            assert _is_fixed_point(after, new)
        backups = fleet.stub.ListBackups(pruner_pb2.ListBackupsRequest()).backups
        assert [(b.graph_version, b.pruned_version) for b in backups] == [(1, 2)]
        assert backups[0].backup_id == job.backup_id
        metrics = urllib.request.urlopen(fleet.metrics_url, timeout=5).read().decode()
        removed = job.edges_before - job.edges_after
        assert f"pruned_edges_total {float(removed)}" in metrics
        assert f"edge_count {float(job.edges_after)}" in metrics
        assert "pruner_duality_gap" in metrics and "pruner_solver_iterations" in metrics

    def test_dry_run_commits_nothing(self, fleet: Fleet) -> None:
        """A dry run reports what it would do; the scheduler keeps its version, no backup."""
        graph, _ = planted_snapshot(80, 0.1, seed=2)
        fleet.seed(graph)
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest(dry_run=True))
        assert job.state == pruner_pb2.JOB_STATE_SUCCEEDED, job.message
        assert job.committed_version == 0 and job.edges_after < job.edges_before
        assert fleet.latest_version() == 1
        assert not fleet.stub.ListBackups(pruner_pb2.ListBackupsRequest()).backups

    def test_guard_refuses_what_breaks_the_bar(self, fleet: Fleet) -> None:
        """tau at its ceiling with no back-off prunes every edge by L1: refused, nothing changes."""
        graph, _ = planted_snapshot(80, 0.2, seed=3)
        fleet.seed(graph)
        options = pruner_pb2.PruneOptions(tau=0.01, max_backoffs=0, retention_target=0.0)
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest(options=options))
        assert job.state == pruner_pb2.JOB_STATE_REFUSED
        assert "refused" in job.message
        assert job.committed_version == 0 and job.edges_after == job.edges_before
        assert fleet.latest_version() == 1
        assert not fleet.stub.ListBackups(pruner_pb2.ListBackupsRequest()).backups

    def test_graph_without_prototypes_is_refused(self, fleet: Fleet) -> None:
        """With no stored prototypes the guard cannot judge, so the pruner does not prune."""
        graph, _ = planted_snapshot(40, 0.1, seed=4)
        fleet.seed(GraphSnapshot(0, graph.concept_ids, graph.weights, graph.biases))
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest())
        assert job.state == pruner_pb2.JOB_STATE_REFUSED
        assert "prototypes" in job.message
        assert fleet.latest_version() == 1


class TestPreviewAndUsage:
    """Preview and edge usage report without changing anything."""

    def test_preview_lists_what_would_go(self, fleet: Fleet) -> None:
        """Removed edges exist in the graph with the reported {0, 1} weight; nothing committed."""
        graph, _ = planted_snapshot(80, 0.1, seed=5)
        fleet.seed(graph)
        preview = fleet.stub.PreviewPruning(pruner_pb2.PreviewPruningRequest(limit=100_000))
        assert preview.would_accept, preview.reason
        assert preview.removed_count == preview.edges_before - preview.edges_after > 0
        assert len(preview.removed) == preview.removed_count
        dense = graph.weights.toarray()
        for e in preview.removed:
            assert dense[e.i, e.j] == pytest.approx(e.weight, rel=1e-12)
            assert (e.concept_i, e.concept_j) == (graph.concept_ids[e.i], graph.concept_ids[e.j])
        assert preview.expected_quality_change == pytest.approx(
            preview.recall_after - preview.recall_before
        )
        assert fleet.latest_version() == 1
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest())
        assert job.edges_after == preview.edges_after

    def test_edge_usage_ranks_edges_against_the_memories_first(self, fleet: Fleet) -> None:
        """An edge whose sign contradicts every prototype has the lowest (negative) usage."""
        graph, xi = planted_snapshot(60, 0.1, seed=6)
        w = graph.weights.tolil()
        # The pair the prototypes agree on most, given a large weight of the opposite sign.
        agreement = np.triu(xi.T @ xi / xi.shape[0], k=1)
        i, j = np.unravel_index(int(np.argmax(np.abs(agreement))), agreement.shape)
        w[i, j] = w[j, i] = -5.0 * np.sign(agreement[i, j])
        fleet.seed(
            GraphSnapshot(
                0, graph.concept_ids, w.tocsr(), graph.biases, graph.prototypes, graph.support
            )
        )
        usage = fleet.stub.GetEdgeUsage(pruner_pb2.GetEdgeUsageRequest(limit=5))
        first = usage.edges[0]
        assert (first.edge.i, first.edge.j) == (i, j)
        assert first.support_fraction < 0.5
        assert first.usage < 0.0
        assert len(usage.edges) == 5 and usage.prototype_count == len(graph.prototypes)
        usages = [e.usage for e in usage.edges]
        assert usages == sorted(usages)
        only = fleet.stub.GetEdgeUsage(pruner_pb2.GetEdgeUsageRequest(concept_id=f"concept:{j}"))
        assert only.edges and all(j in (e.edge.i, e.edge.j) for e in only.edges)


class TestRollbackAndConflicts:
    """Backups restore exactly; a concurrent commit is detected and the run recomputed."""

    def test_rollback_restores_the_backed_up_version(self, fleet: Fleet) -> None:
        """RollbackPruning commits a version identical to the one the pruning replaced."""
        graph, _ = planted_snapshot(80, 0.1, seed=7)
        fleet.seed(graph)
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest())
        assert job.state == pruner_pb2.JOB_STATE_SUCCEEDED, job.message
        response = fleet.stub.RollbackPruning(pruner_pb2.RollbackPruningRequest())
        assert response.backup.backup_id == job.backup_id
        assert response.restored_version == 3
        _assert_identical(read_back(fleet.sched, 3), read_back(fleet.sched, 1))

    def test_concurrent_commit_is_detected_and_recomputed(self, start_fleet: FleetFactory) -> None:
        """A commit landing while the pruner computes makes its commit conflict; it re-reads
        the new version, recomputes and commits on top of it.

        The interleaving is forced, not raced: the pruner's first commit is held (HeldCommit
        around its real client) until the concurrent version has landed."""
        held = HeldCommit()
        fleet = start_fleet(wrap=held.around)
        graph, _ = planted_snapshot(200, 0.1, seed=8)
        fleet.seed(graph)
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest(background=True))
        assert held.arrived.wait(HOLD_GUARD_S), "the pruner never committed"
        status = fleet.stub.GetPruningStatus(pruner_pb2.GetPruningStatusRequest(job_id=job.job_id))
        assert status.base_version == 1
        # The concurrent writer (as consolidation would): same graph, nudged biases.
        nudged = GraphSnapshot(
            0,
            graph.concept_ids,
            graph.weights,
            graph.biases * 1.01,
            graph.prototypes,
            graph.support,
        )
        assert fleet.seed(nudged, base_version=1) == 2
        held.release()
        done = fleet.wait_job(job.job_id)
        assert done.state == pruner_pb2.JOB_STATE_SUCCEEDED, done.message
        assert done.conflict_retries == 1
        assert (done.base_version, done.committed_version) == (2, 3)
        backups = fleet.stub.ListBackups(pruner_pb2.ListBackupsRequest()).backups
        assert [(b.graph_version, b.pruned_version) for b in backups] == [(2, 3)]
        pruned = read_back(fleet.sched, 3)
        # Derived from the concurrent version: its biases carry the 1% nudge.
        assert _support_inside(pruned.weights, nudged.weights)
        assert _is_fixed_point(pruned, pruned.prototypes[0])

    def test_rollback_keeps_concepts_added_since(self, fleet: Fleet) -> None:
        """Concepts added after the backup keep their positions, unconnected; the backed-up
        part is restored exactly."""
        graph, _ = planted_snapshot(60, 0.1, seed=9)
        fleet.seed(graph)
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest())
        assert job.state == pruner_pb2.JOB_STATE_SUCCEEDED, job.message
        pruned = read_back(fleet.sched, 2)
        n = pruned.n_concepts
        grown = GraphSnapshot(
            0,
            (*pruned.concept_ids, "concept:new"),
            sp.csr_matrix(
                (
                    pruned.weights.data,
                    pruned.weights.indices,
                    np.append(pruned.weights.indptr, pruned.weights.indptr[-1]),
                ),
                shape=(n + 1, n + 1),
            ),
            np.append(pruned.biases, 0.25),
            pruned.prototypes,
            pruned.support,
        )
        fleet.seed(grown, base_version=2)
        response = fleet.stub.RollbackPruning(
            pruner_pb2.RollbackPruningRequest(backup_id=job.backup_id)
        )
        restored = read_back(fleet.sched, response.restored_version)
        assert restored.concept_ids == (*graph.concept_ids, "concept:new")
        assert restored.biases[-1] == 0.25
        assert (
            abs(restored.weights - sp.block_diag([graph.weights, sp.csr_matrix((1, 1))]))
        ).nnz == 0


class TestJobs:
    """Status, cancellation and errors of the job API."""

    def test_cancel_commits_nothing(self, start_fleet: FleetFactory) -> None:
        """A job cancelled while it runs ends CANCELLED and the graph keeps its version.

        Forced, not raced: the job's read of the graph is held (HeldRead around the real client)
        until the cancel has been answered, so the job cannot finish first."""
        held = HeldRead()
        fleet = start_fleet(wrap=held.around)
        graph, _ = planted_snapshot(200, 0.1, seed=10)
        fleet.seed(graph)
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest(background=True))
        assert held.arrived.wait(HOLD_GUARD_S), "the job never read the graph"
        cancelled = fleet.stub.CancelPruning(pruner_pb2.CancelPruningRequest(job_id=job.job_id))
        assert cancelled.job_id == job.job_id
        held.release()
        done = fleet.wait_job(job.job_id)
        assert done.state == pruner_pb2.JOB_STATE_CANCELLED
        assert fleet.latest_version() == 1
        code = _code(
            lambda: fleet.stub.CancelPruning(pruner_pb2.CancelPruningRequest(job_id=job.job_id))
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION

    def test_bad_input_is_refused_and_changes_nothing(self, fleet: Fleet) -> None:
        """Out-of-range knobs name the field; unknown ids are NOT_FOUND."""
        stub = fleet.stub
        with pytest.raises(grpc.RpcError) as info:
            stub.TriggerPruning(
                pruner_pb2.TriggerPruningRequest(options=pruner_pb2.PruneOptions(tau=0.5))
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tau" in str(info.value.details())
        before = stub.GetConfig(pruner_pb2.GetConfigRequest())
        with pytest.raises(grpc.RpcError) as info:
            stub.UpdateConfig(pruner_pb2.UpdateConfigRequest(tau=0.002, max_quality_drop=2.0))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_quality_drop" in str(info.value.details())
        assert stub.GetConfig(pruner_pb2.GetConfigRequest()) == before
        unknown = pruner_pb2.GetPruningStatusRequest(job_id="nope")
        assert _code(lambda: stub.GetPruningStatus(unknown)) == grpc.StatusCode.NOT_FOUND
        bad_backup = pruner_pb2.RollbackPruningRequest(backup_id="nope")
        assert _code(lambda: stub.RollbackPruning(bad_backup)) == grpc.StatusCode.NOT_FOUND
        bad_limit = pruner_pb2.GetEdgeUsageRequest(limit=-1)
        assert _code(lambda: stub.GetEdgeUsage(bad_limit)) == grpc.StatusCode.INVALID_ARGUMENT
        for interval in (-1.0, 1e12):  # 1e12 s: a next run past year 9999 (property tests)
            bad_schedule = pruner_pb2.SchedulePruningRequest(interval_s=interval)
            code = _code(lambda: stub.SchedulePruning(bad_schedule))  # noqa: B023
            assert code == grpc.StatusCode.INVALID_ARGUMENT

    def test_update_config_applies(self, fleet: Fleet) -> None:
        """A valid UpdateConfig changes the knobs in force and the tau gauge."""
        cfg = fleet.stub.UpdateConfig(pruner_pb2.UpdateConfigRequest(tau=0.002, auto_tune=True))
        assert (cfg.tau, cfg.auto_tune) == (0.002, True)
        metrics = urllib.request.urlopen(fleet.metrics_url, timeout=5).read().decode()
        assert "pruner_tau 0.002" in metrics


def test_scheduler_down_fails_the_job(start_fleet: FleetFactory) -> None:
    """With the scheduler gone a job fails with a message naming it and its address in plain
    words (no RPC name: the message reaches MCP callers); the pruner keeps serving."""
    fleet = start_fleet(sparse_pruner={"scheduler_timeout_s": 2.0})
    fleet.scheduler.stop()
    job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest())
    assert job.state == pruner_pb2.JOB_STATE_FAILED
    assert job.message.startswith("the sleep-scheduler at 127.0.0.1:"), job.message
    assert not any(rpc in job.message for rpc in ("ReadGraph", "ListGraphVersions", "Commit"))
    assert fleet.stub.GetPruningStats(pruner_pb2.GetPruningStatsRequest()).runs_failed == 1
