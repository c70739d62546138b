"""The versioned graph store and the graph RPCs over real gRPC."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.adapters.graph_store import (
    GraphStore,
    StoredGraph,
    VersionConflict,
    VersionNotFound,
)
from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex
from mcp_services.sleep_scheduler.rpc.codec import commit_chunks, stored_of_chunks
from tests.sleep_scheduler.conftest import Scheduler, SchedulerFactory


def random_graph(n: int, seed: int, density: float = 0.2, prefix: str = "c") -> ConceptGraph:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, n)) * (rng.random((n, n)) < density)
    w = np.triu(w, 1)
    return ConceptGraph(
        ConceptIndex.of_size(n, prefix), sp.csr_matrix(w + w.T), rng.normal(size=n) * 0.3
    )


def two_assemblies() -> tuple[ConceptGraph, sp.csr_matrix]:
    """A graph over 12 concepts storing {0..4} and {5..9} (10, 11 unrelated), with prototypes."""
    n = 12
    w = np.zeros((n, n))
    for group in (range(5), range(5, 10)):
        for i in group:
            for j in group:
                if i != j:
                    w[i, j] = 1.0
    b = np.full(n, -1.5)
    protos = sp.csr_matrix(np.array([[1.0] * 5 + [0.0] * 7, [0.0] * 5 + [1.0] * 5 + [0.0] * 2]))
    return ConceptGraph(ConceptIndex.of_size(n, "concept:"), sp.csr_matrix(w), b), protos


def commit(
    sched: Scheduler,
    base: int,
    graph: ConceptGraph,
    protos: sp.csr_matrix | None = None,
    chunk_edges: int = 7,
    author: str = "test",
) -> sleep_pb2.CommitGraphResponse:
    chunks = commit_chunks(base, graph, protos, None, author, "r", chunk_edges)
    resp: sleep_pb2.CommitGraphResponse = sched.stub.CommitGraph(iter(chunks))
    return resp


def read(sched: Scheduler, version: int = 0, chunk_edges: int = 0) -> StoredGraph:
    return stored_of_chunks(
        sched.stub.ReadGraph(sleep_pb2.ReadGraphRequest(version=version, chunk_edges=chunk_edges))
    )


def latest(sched: Scheduler) -> int:
    return int(sched.stub.GetGraphStats(sleep_pb2.GetGraphStatsRequest()).header.version)


def assert_same_graph(a: ConceptGraph, b: ConceptGraph) -> None:
    assert a.index.ids == b.index.ids
    np.testing.assert_array_equal(a.biases, b.biases)
    assert abs(a.weights - b.weights).max() == 0.0 if a.weights.nnz else b.weights.nnz == 0


class TestReadCommit:
    def test_a_fresh_scheduler_serves_the_empty_version_zero(self, scheduler: Scheduler) -> None:
        """Before any commit the latest graph is version 0 with no concepts or edges."""
        g = read(scheduler)
        assert g.meta.version == 0 and g.graph.size == 0
        assert not scheduler.stub.ListGraphVersions(sleep_pb2.ListGraphVersionsRequest()).versions

    def test_a_committed_graph_reads_back_identically_in_many_chunks(
        self, scheduler: Scheduler
    ) -> None:
        """Concepts, biases, every edge and the prototypes survive a chunked round trip."""
        g = random_graph(60, seed=1)
        protos = sp.csr_matrix((np.random.default_rng(2).random((4, 60)) < 0.2).astype(float))
        resp = commit(scheduler, 0, g, protos)
        assert resp.header.version == 1 and resp.header.base_version == 0
        assert resp.header.edge_count == g.edge_count and resp.header.author == "test"
        chunks = list(scheduler.stub.ReadGraph(sleep_pb2.ReadGraphRequest(chunk_edges=16)))
        assert len(chunks) > g.edge_count // 16
        back = stored_of_chunks(chunks)
        assert back.meta.version == 1
        assert_same_graph(back.graph, g)
        assert abs(back.prototypes - protos).sum() == 0

    def test_commit_against_a_stale_base_fails_and_changes_nothing(
        self, scheduler: Scheduler
    ) -> None:
        """A writer whose base is no longer the latest gets FAILED_PRECONDITION."""
        commit(scheduler, 0, random_graph(10, 1))
        commit(scheduler, 1, random_graph(10, 2))
        with pytest.raises(grpc.RpcError) as err:
            commit(scheduler, 1, random_graph(10, 3))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "base_version 1" in str(err.value.details())
        assert latest(scheduler) == 2
        assert_same_graph(read(scheduler).graph, random_graph(10, 2))

    def test_two_writers_on_the_same_base_exactly_one_wins(self, scheduler: Scheduler) -> None:
        """Concurrent commits against one base: one version is made, the other writer conflicts."""
        codes: list[grpc.StatusCode] = []

        def write(seed: int) -> None:
            try:
                commit(scheduler, 0, random_graph(30, seed))
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())

        threads = [threading.Thread(target=write, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(c.name for c in codes) == ["FAILED_PRECONDITION"] * 3 + ["OK"]
        assert latest(scheduler) == 1

    def test_prototypes_are_kept_when_a_commit_sends_none(self, scheduler: Scheduler) -> None:
        """A weights-only commit (the pruner's) inherits the stored memories of its base."""
        g, protos = two_assemblies()
        commit(scheduler, 0, g, protos)
        commit(scheduler, 1, g.with_update(sp.csr_matrix((12, 12)), np.zeros(12) - 0.1))
        back = read(scheduler)
        assert back.meta.version == 2 and abs(back.prototypes - protos).sum() == 0

    def test_the_concept_index_may_grow_and_keeps_positions(self, scheduler: Scheduler) -> None:
        """A commit may append concepts; the old ones keep their positions."""
        g = random_graph(10, 1)
        commit(scheduler, 0, g)
        grown = g.resized(g.index.extended(["new:a", "new:b"]))
        commit(scheduler, 1, grown)
        assert read(scheduler).graph.index.ids == (*g.index.ids, "new:a", "new:b")


class TestBadInput:
    @staticmethod
    def _chunks(**fields: object) -> list[sleep_pb2.GraphChunk]:
        header = sleep_pb2.GraphHeader(base_version=0, author="t")
        return [sleep_pb2.GraphChunk(header=header, **fields)]  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("fields", "needle"),
        [
            ({"concept_ids": ["a", "b"], "biases": [0.0]}, "bias"),
            ({"concept_ids": ["a", "a"], "biases": [0.0, 0.0]}, "concept_ids"),
            ({"concept_ids": ["a", ""], "biases": [0.0, 0.0]}, "concept_ids"),
            ({"concept_ids": ["a", "b"], "biases": [0.0, float("nan")]}, "biases"),
            (
                {
                    "concept_ids": ["a", "b"],
                    "biases": [0, 0],
                    "edge_i": [1],
                    "edge_j": [0],
                    "edge_w": [1],
                },
                "i < j",
            ),
            (
                {
                    "concept_ids": ["a", "b"],
                    "biases": [0, 0],
                    "edge_i": [0],
                    "edge_j": [2],
                    "edge_w": [1],
                },
                "edge_i/edge_j",
            ),
            (
                {
                    "concept_ids": ["a", "b"],
                    "biases": [0, 0],
                    "edge_i": [0, 0],
                    "edge_j": [1, 1],
                    "edge_w": [1, 2],
                },
                "appears twice",
            ),
            (
                {
                    "concept_ids": ["a", "b"],
                    "biases": [0, 0],
                    "edge_i": [0],
                    "edge_j": [1],
                    "edge_w": [float("inf")],
                },
                "edge_w",
            ),
            (
                {
                    "concept_ids": ["a", "b"],
                    "biases": [0, 0],
                    "edge_i": [0],
                    "edge_j": [1],
                    "edge_w": [],
                },
                "edge_w",
            ),
            (
                {
                    "concept_ids": ["a", "b"],
                    "biases": [0, 0],
                    "prototypes": [sleep_pb2.Prototype(active=[0, 5])],
                },
                "prototypes[0].active",
            ),
        ],
    )
    def test_malformed_commits_are_refused_naming_the_field(
        self, scheduler: Scheduler, fields: dict[str, object], needle: str
    ) -> None:
        """Each malformed graph is INVALID_ARGUMENT naming the field, and no version is made."""
        with pytest.raises(grpc.RpcError) as err:
            scheduler.stub.CommitGraph(iter(self._chunks(**fields)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in str(err.value.details())
        assert latest(scheduler) == 0

    def test_a_stream_without_a_header_is_refused(self, scheduler: Scheduler) -> None:
        """The first chunk must carry the header."""
        with pytest.raises(grpc.RpcError) as err:
            scheduler.stub.CommitGraph(iter([sleep_pb2.GraphChunk(concept_ids=["a"], biases=[0])]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "header" in str(err.value.details())

    def test_a_commit_that_reorders_the_base_concepts_is_refused(
        self, scheduler: Scheduler
    ) -> None:
        """Concept positions never move: the new list must start with the base's."""
        commit(scheduler, 0, random_graph(5, 1))
        shuffled = ConceptGraph.empty(ConceptIndex(("c1", "c0", "c2", "c3", "c4")))
        with pytest.raises(grpc.RpcError) as err:
            commit(scheduler, 1, shuffled)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "concept_ids must start with" in str(err.value.details())
        assert latest(scheduler) == 1

    def test_unknown_version_is_not_found_and_negative_is_invalid(
        self, scheduler: Scheduler
    ) -> None:
        """Reading a version never made is NOT_FOUND; a negative one is INVALID_ARGUMENT."""
        with pytest.raises(grpc.RpcError) as err:
            read(scheduler, version=7)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            read(scheduler, version=-1)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            read(scheduler, chunk_edges=-5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "chunk_edges" in str(err.value.details())


class TestRetentionAndDurability:
    def test_only_the_last_k_versions_are_kept(self, start_scheduler: SchedulerFactory) -> None:
        """With keep_versions = 3, five commits leave versions 5, 4, 3 listed, newest first."""
        sched = start_scheduler(sleep_scheduler={"keep_versions": 3})
        for v in range(5):
            commit(sched, v, random_graph(8, v))
        listed = sched.stub.ListGraphVersions(sleep_pb2.ListGraphVersionsRequest()).versions
        assert [x.header.version for x in listed] == [5, 4, 3]
        assert all(x.header.author == "test" and x.header.HasField("created_at") for x in listed)
        with pytest.raises(grpc.RpcError) as err:
            read(sched, version=2)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert_same_graph(read(sched, version=3).graph, random_graph(8, 2))

    def test_versions_survive_a_restart(self, start_scheduler: SchedulerFactory) -> None:
        """A new server over the same directory serves the committed versions."""
        first = start_scheduler()
        g, protos = two_assemblies()
        commit(first, 0, g, protos)
        first.server.stop()
        second = start_scheduler(settings=first.settings)
        back = read(second)
        assert back.meta.version == 1
        assert_same_graph(back.graph, g)
        assert back.prototypes.shape == (2, 12)

    def test_a_torn_temporary_file_is_ignored_and_cleaned(self, tmp_path: Path) -> None:
        """A crash mid-write leaves a .tmp file: it is never read as a version and is removed."""
        store = GraphStore(tmp_path, keep=5)
        store.commit(0, random_graph(6, 1), None, None, "t")
        torn = tmp_path / ".tmp-crash.npz"
        torn.write_bytes(b"PK\x03\x04 half a file")
        assert store.latest_version() == 1
        GraphStore(tmp_path, keep=5)
        assert not torn.exists()
        assert_same_graph(GraphStore(tmp_path).read().graph, random_graph(6, 1))

    def test_two_stores_on_one_directory_see_each_others_commits(self, tmp_path: Path) -> None:
        """Replicas sharing the directory: a commit by one makes the other's base stale."""
        a, b = GraphStore(tmp_path), GraphStore(tmp_path)
        a.commit(0, random_graph(6, 1), None, None, "a")
        assert b.read().meta.version == 1
        with pytest.raises(VersionConflict):
            b.commit(0, random_graph(6, 2), None, None, "b")
        with pytest.raises(VersionNotFound):
            b.read(9)

    def test_the_graph_is_never_stored_dense(self, tmp_path: Path) -> None:
        """A 20k-concept graph with 60 edges stores in a few hundred KiB, not 20k x 20k floats."""
        n = 20_000
        rng = np.random.default_rng(0)
        i = rng.integers(0, n - 1, size=60)
        w = sp.coo_matrix((np.ones(60), (i, i + 1)), shape=(n, n))
        g = ConceptGraph(ConceptIndex.of_size(n), sp.csr_matrix(w + w.T), np.zeros(n))
        GraphStore(tmp_path).commit(0, g, None, None, "t")
        size = sum(p.stat().st_size for p in tmp_path.glob("v*.npz"))
        assert size < 1_000_000


class TestStatsAndComplete:
    def test_stats_describe_the_version(self, scheduler: Scheduler) -> None:
        """Density, weights, prototypes and connected concepts match the committed graph."""
        g, protos = two_assemblies()
        commit(scheduler, 0, g, protos)
        s = scheduler.stub.GetGraphStats(sleep_pb2.GetGraphStatsRequest())
        assert s.header.version == 1 and s.header.edge_count == 20
        assert s.density == pytest.approx(20 / 66)
        assert s.mean_abs_weight == 1.0 and s.max_abs_weight == 1.0
        assert s.prototype_count == 2 and s.connected_concepts == 10

    def test_a_partial_cue_completes_to_its_assembly(self, scheduler: Scheduler) -> None:
        """Three members of an assembly plus an unknown concept settle into the whole assembly."""
        g, protos = two_assemblies()
        commit(scheduler, 0, g, protos)
        resp = scheduler.stub.Complete(
            sleep_pb2.CompleteRequest(
                concept_ids=["concept:5", "concept:6", "concept:7", "concept:11", "elsewhere"],
                strengths=[1.0, 0.9, 0.8, 0.7, 1.0],
            )
        )
        assert sorted(resp.concept_ids) == [f"concept:{i}" for i in range(5, 10)]
        assert sorted(resp.added) == ["concept:8", "concept:9"]
        assert list(resp.removed) == ["concept:11"]
        assert list(resp.unknown) == ["elsewhere"]
        assert resp.converged and resp.version == 1
        assert all(0.0 < s <= 1.0 for s in resp.strengths) and max(resp.strengths) == 1.0
        assert resp.energy < 0

    def test_complete_on_the_empty_graph_reports_every_concept_unknown(
        self, scheduler: Scheduler
    ) -> None:
        """Before the first consolidation nothing is known and nothing is completed."""
        resp = scheduler.stub.Complete(
            sleep_pb2.CompleteRequest(concept_ids=["a"], strengths=[1.0])
        )
        assert list(resp.unknown) == ["a"] and not resp.concept_ids and resp.version == 0

    @pytest.mark.parametrize(
        ("request_", "needle"),
        [
            (sleep_pb2.CompleteRequest(concept_ids=["a", "b"], strengths=[1.0]), "strengths"),
            (sleep_pb2.CompleteRequest(concept_ids=["a"], strengths=[1.5]), "strengths[0]"),
            (sleep_pb2.CompleteRequest(concept_ids=[""], strengths=[1.0]), "concept_ids[0]"),
            (sleep_pb2.CompleteRequest(concept_ids=["a", "a"], strengths=[1, 1]), "repeats"),
            (
                sleep_pb2.CompleteRequest(concept_ids=["a"], strengths=[1], max_sweeps=-1),
                "max_sweeps",
            ),
            (sleep_pb2.CompleteRequest(concept_ids=["a"], strengths=[1], version=-2), "version"),
        ],
    )
    def test_bad_cues_are_invalid_argument(
        self, scheduler: Scheduler, request_: sleep_pb2.CompleteRequest, needle: str
    ) -> None:
        """A malformed cue names its field."""
        with pytest.raises(grpc.RpcError) as err:
            scheduler.stub.Complete(request_)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in str(err.value.details())
