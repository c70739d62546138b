"""Completion never makes a cue worse without saying so, and Recall then keeps the cue (issue 14).

Domain: prototype retrieval, the overlap figures and ``moved_away``. Service: the Complete RPC
carries them, and a real vault whose Recall completes through a real scheduler does not expand a
cue with a completion that moved away from every stored prototype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.domain import ConceptActivation, ConceptGraph, ConceptIndex
from mcp_services.sleep_scheduler.domain.completion import complete, retrieve
from mcp_services.sleep_scheduler.rpc.codec import commit_chunks
from tests.conftest import SettingsFactory
from tests.sleep_scheduler.conftest import Scheduler

N = 12
VaultFactory = Callable[[Scheduler], episodic_pb2_grpc.EpisodicVaultStub]


def assemblies_graph(bias: float = -1.5) -> tuple[ConceptGraph, sp.csr_matrix]:
    """{0..4} and {5..9} coupled within (10, 11 unrelated), and the two as prototypes."""
    w = np.zeros((N, N))
    for group in (range(5), range(5, 10)):
        for i in group:
            for j in group:
                if i != j:
                    w[i, j] = 1.0
    protos = sp.csr_matrix(np.array([[1.0] * 5 + [0.0] * 7, [0.0] * 5 + [1.0] * 5 + [0.0] * 2]))
    graph = ConceptGraph(ConceptIndex.of_size(N, "concept:"), sp.csr_matrix(w), np.full(N, bias))
    return graph, protos


def drifting_graph() -> tuple[ConceptGraph, sp.csr_matrix]:
    """The same prototypes over a graph that pulls concept 10 into {10, 11} and drops 0."""
    _, protos = assemblies_graph()
    w = np.zeros((N, N))
    w[10, 11] = w[11, 10] = 2.0
    graph = ConceptGraph(ConceptIndex.of_size(N, "concept:"), sp.csr_matrix(w), np.full(N, -1.0))
    return graph, protos


def cue(*concepts: int) -> ConceptActivation:
    return ConceptActivation.of_active([f"concept:{c}" for c in concepts])


class TestCompletionFigures:
    def test_a_partial_cue_is_completed_and_scored(self) -> None:
        """Four of five members complete to the prototype: overlap 1.0 above the cue's, kept."""
        graph, protos = assemblies_graph()
        res = complete(graph, cue(0, 1, 2, 3), prototypes=protos)
        assert res.concept_ids == tuple(f"concept:{c}" for c in range(5))
        assert res.overlap == pytest.approx(1.0)
        assert 0.0 < res.cue_overlap < res.overlap
        assert res.confidence > 0.99 and not res.moved_away

    def test_a_completion_that_loses_the_memory_says_so(self) -> None:
        """A cue too far for retrieval settles away from every prototype: moved_away is set."""
        graph, protos = drifting_graph()
        res = complete(graph, cue(0, 10), prototypes=protos)
        assert res.confidence == 0.0
        assert res.concept_ids == ("concept:10", "concept:11")
        assert res.overlap < res.cue_overlap
        assert res.moved_away

    def test_a_retrieved_prototype_the_graph_does_not_hold_is_kept(self) -> None:
        """Settling that would lose a retrieved prototype is not taken: the prototype answers."""
        graph, protos = drifting_graph()
        res = complete(graph, cue(0, 1, 2, 3), prototypes=protos)
        assert res.concept_ids == tuple(f"concept:{c}" for c in range(5))
        assert not res.moved_away

    def test_a_cue_like_no_prototype_is_not_pulled_into_one(self) -> None:
        """A cue below the retrieval overlap keeps its own start: confidence 0."""
        _, protos = assemblies_graph()
        start = sp.csr_matrix(np.eye(N)[[10, 11]].sum(axis=0, keepdims=True))
        out, confidence = retrieve(start, protos)
        assert np.array_equal(out.toarray(), start.toarray())
        assert confidence[0] == 0.0

    def test_without_prototypes_the_graph_alone_answers(self) -> None:
        """With no prototypes the figures are 0 and nothing is flagged."""
        graph, _ = assemblies_graph()
        res = complete(graph, cue(5, 6, 7, 8))
        assert res.concept_ids == tuple(f"concept:{c}" for c in range(5, 10))
        assert (res.cue_overlap, res.overlap, res.confidence, res.moved_away) == (0, 0, 0, False)


def commit(sched: Scheduler, graph: ConceptGraph, protos: sp.csr_matrix) -> None:
    sched.stub.CommitGraph(iter(commit_chunks(0, graph, protos, None, "test", "guard")))


@pytest.fixture
def vault_for(make_settings: SettingsFactory) -> Iterator[VaultFactory]:
    """Start a memory vault whose Recall completes through the given scheduler."""
    started: list[tuple[ServerThread, grpc.Channel]] = []

    def factory(sched: Scheduler) -> episodic_pb2_grpc.EpisodicVaultStub:
        settings = make_settings(
            vault={
                "backend": "memory",
                "embedding_dim": 8,
                "recall": {"scheduler_address": sched.target, "completion_timeout_ms": 5000},
            }
        )
        server = ServerThread("episodic-vault", "episodic_vault", VaultService, settings).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.running.grpc_port}")
        started.append((server, channel))
        return episodic_pb2_grpc.EpisodicVaultStub(channel)

    yield factory
    for server, channel in started:
        channel.close()
        server.stop()


def recall(
    vault: episodic_pb2_grpc.EpisodicVaultStub, *concepts: int
) -> episodic_pb2.RecallResponse:
    ids = [f"concept:{c}" for c in concepts]
    act = episodic_pb2.ConceptActivation(concept_ids=ids, strengths=[1.0] * len(ids))
    vault.PutEpisode(
        episodic_pb2.PutEpisodeRequest(
            episode=episodic_pb2.Episode(source=episodic_pb2.Source(type="test"), activation=act)
        )
    )
    resp: episodic_pb2.RecallResponse = vault.Recall(
        episodic_pb2.RecallRequest(cue=act), timeout=10
    )
    return resp


class TestCompleteService:
    def test_complete_reports_overlaps_and_confidence(self, scheduler: Scheduler) -> None:
        """The Complete RPC carries cue_overlap, overlap, confidence, prototypes, moved_away."""
        commit(scheduler, *assemblies_graph())
        ids = [f"concept:{c}" for c in (5, 6, 7, 8)]
        resp = scheduler.stub.Complete(
            sleep_pb2.CompleteRequest(concept_ids=ids, strengths=[1.0] * 4)
        )
        assert sorted(resp.concept_ids) == sorted(f"concept:{c}" for c in range(5, 10))
        assert resp.prototypes == 2
        assert resp.overlap == pytest.approx(1.0) and resp.cue_overlap < 1.0
        assert resp.confidence > 0.99 and not resp.moved_away

    def test_recall_does_not_expand_a_cue_the_completion_made_worse(
        self, scheduler: Scheduler, vault_for: VaultFactory
    ) -> None:
        """Recall ranks by the cue as given and says why when Complete moved away."""
        commit(scheduler, *drifting_graph())
        resp = recall(vault_for(scheduler), 0, 10)
        assert resp.completion == episodic_pb2.COMPLETION_UNAVAILABLE
        assert "away from every stored prototype" in resp.completion_detail
        assert sorted(resp.effective_cue.concept_ids) == ["concept:0", "concept:10"]

    def test_recall_expands_a_cue_the_completion_improved(
        self, scheduler: Scheduler, vault_for: VaultFactory
    ) -> None:
        """A good completion is applied: the effective cue is the whole assembly."""
        commit(scheduler, *assemblies_graph())
        resp = recall(vault_for(scheduler), 0, 1, 2, 3)
        assert resp.completion == episodic_pb2.COMPLETION_APPLIED
        assert sorted(resp.effective_cue.concept_ids) == [f"concept:{c}" for c in range(5)]


class TestAbstention:
    def test_a_cue_torn_between_two_prototypes_is_answered_as_given(self) -> None:
        """Equally near two stored classes, completion abstains: the cue comes back unchanged."""
        w = np.zeros((N, N))
        protos = sp.csr_matrix(
            np.array([[1.0] * 4 + [0.0] * 8, [1.0] * 2 + [0.0] * 2 + [1.0] * 2 + [0.0] * 6])
        )
        graph = ConceptGraph(ConceptIndex.of_size(N, "concept:"), sp.csr_matrix(w), np.full(N, 0.5))
        res = complete(graph, cue(0, 1), prototypes=protos)
        assert res.concept_ids == ("concept:0", "concept:1")
        assert 0.0 < res.confidence < 0.6
