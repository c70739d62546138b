"""The SparsePruner service against a real SleepScheduler: prune, guard, backups, rollback."""

from __future__ import annotations

import numpy as np

from mcp_services.gen.tori.pruner.v1 import pruner_pb2

from .conftest import Fleet, planted_snapshot, read_back


def _fields_fixed(graph_w: object, biases: np.ndarray, active: np.ndarray, n: int) -> bool:
    s = np.zeros(n)
    s[active] = 1.0
    h = np.asarray(graph_w @ s).ravel() + biases  # type: ignore[operator]
    return bool(np.all((h > 0) == (s > 0)) and np.all(h != 0))


class TestPruning:
    """A run reads the latest version, prunes behind the guard and commits a new version."""

    def test_prunes_and_commits_keeping_the_memory(self, fleet: Fleet) -> None:
        """N = 200, alpha 0.1: >= 80% of edges go, recall >= 0.95, prototypes stay fixed."""
        graph, _ = planted_snapshot(200, 0.1, seed=0)
        assert fleet.seed(graph) == 1
        job = fleet.stub.TriggerPruning(pruner_pb2.TriggerPruningRequest())
        assert job.state == pruner_pb2.JOB_STATE_SUCCEEDED, job.message
        assert job.base_version == 1 and job.committed_version == 2
        assert job.edges_after <= 0.2 * job.edges_before
        assert job.quality_after >= 0.95
        after = read_back(fleet.sched, 2)
        # Never adds an edge; symmetric; the prototypes are unchanged and still fixed points.
        assert (
            abs(after.weights).sign()
            - abs(after.weights).sign().multiply(abs(graph.weights).sign())
        ).nnz == 0
        assert abs(after.weights - after.weights.T).max() == 0.0
        assert len(after.prototypes) == len(graph.prototypes)
        for p_old, p_new in zip(graph.prototypes, after.prototypes, strict=True):
            np.testing.assert_array_equal(p_old, p_new)
            assert _fields_fixed(after.weights, after.biases, p_new, 200)
