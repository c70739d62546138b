"""One graph per namespace: a namespace consolidates its own episodes only, into a graph of its own
under graphs/namespaces/<ns>/, and completes cues through it; another namespace's episodes change
neither its graph nor its completions."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import scipy.sparse as sp

from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.adapters.graph_store import StoredGraph
from mcp_services.sleep_scheduler.domain.planted import planted_sparse
from mcp_services.sleep_scheduler.rpc.codec import stored_of_chunks
from mcp_services.sleep_scheduler.server import graph_dir
from tests.conftest import SettingsFactory, free_port
from tests.sleep_scheduler.conftest import Pair, PairFactory, SchedulerFactory

ALICE = (("x-tori-namespace", "alice"),)
BOB = (("x-tori-namespace", "bob"),)
N = 60
COPIES = 6  # presentations of each of 3 assemblies: 18 episodes a namespace


def put(pair: Pair, states: sp.csr_matrix, prefix: str, md: tuple[tuple[str, str], ...]) -> int:
    """Store each row as an episode of the namespace `md` names, concepts named by `prefix`."""
    return pair.put_states(states, prefix, metadata=md)


def episodes(seed: int) -> sp.csr_matrix:
    """Noisy presentations of a few planted assemblies over N concepts."""
    return planted_sparse(N, 3, (0.15, 0.2), COPIES, 0.05, seed).episodes


def consolidate(pair: Pair, md: tuple[tuple[str, str], ...]) -> sleep_pb2.ConsolidationJob:
    req = sleep_pb2.StartConsolidationRequest(wait=True, trigger="test")
    job: sleep_pb2.ConsolidationJob = pair.sched.stub.StartConsolidation(
        req, metadata=md, timeout=300
    )
    assert job.state == sleep_pb2.JOB_STATE_SUCCEEDED, job
    return job


def latest(pair: Pair, md: tuple[tuple[str, str], ...] = ()) -> StoredGraph:
    return stored_of_chunks(pair.sched.stub.ReadGraph(sleep_pb2.ReadGraphRequest(), metadata=md))


def unconsolidated(pair: Pair, md: tuple[tuple[str, str], ...]) -> int:
    stats = pair.vault.GetStats(episodic_pb2.GetStatsRequest(), metadata=md)
    return int(stats.unconsolidated_count)


class TestGraphPerNamespace:
    def test_a_namespace_consolidates_only_its_own_episodes(self, start_pair: PairFactory) -> None:
        """Bob's cycle learns bob's concepts into bob's graph, in its own directory, and leaves
        alice's episodes unconsolidated and the default graph at version 0."""
        pair = start_pair()
        put(pair, episodes(1), "concept:alice-", ALICE)
        put(pair, episodes(2), "concept:bob-", BOB)
        consolidate(pair, BOB)
        bob = latest(pair, BOB)
        assert bob.meta.version == 1 and bob.meta.concept_count > 0
        assert all(c.startswith("concept:bob-") for c in bob.graph.index.ids)
        assert unconsolidated(pair, BOB) < 18 and unconsolidated(pair, ALICE) == 18
        assert latest(pair).meta.version == 0
        assert latest(pair, ALICE).meta.version == 0
        root = graph_dir(pair.sched.settings)
        assert any((root / "namespaces" / "bob").iterdir())
        assert not list(Path(root).glob("*.npz"))

    def test_completion_runs_through_the_namespaces_own_graph(
        self, start_pair: PairFactory
    ) -> None:
        """Complete in bob answers from bob's graph; the same cue in alice (no graph yet) knows
        none of bob's concepts."""
        pair = start_pair()
        states = episodes(2)
        put(pair, states, "concept:bob-", BOB)
        consolidate(pair, BOB)
        row = states.indices[states.indptr[0] : states.indptr[1]]
        cue = [f"concept:bob-{c}" for c in row[: max(1, len(row) // 2)]]
        req = sleep_pb2.CompleteRequest(concept_ids=cue, strengths=[1.0] * len(cue))
        mine = pair.sched.stub.Complete(req, metadata=BOB)
        assert mine.version == 1 and mine.concept_ids
        theirs = pair.sched.stub.Complete(req, metadata=ALICE)
        assert theirs.version == 0 and not theirs.concept_ids
        assert sorted(theirs.unknown) == sorted(cue)


class TestUnchangedByOthers:
    def test_bobs_graph_and_completion_do_not_depend_on_alices_episodes(
        self, start_pair: PairFactory, tmp_path: Path
    ) -> None:
        """The same episodes of bob give the same graph and the same completion whether or not
        alice's (different) episodes are stored and consolidated beside them."""
        bob_states = episodes(2)
        graphs = []
        completions = []
        for with_alice in (False, True):
            # Two fleets, each with graphs of its own.
            pair = start_pair(graph_dir=str(tmp_path / f"graphs-{with_alice}"))
            if with_alice:
                put(pair, episodes(1), "concept:alice-", ALICE)
                consolidate(pair, ALICE)
            put(pair, bob_states, "concept:bob-", BOB)
            consolidate(pair, BOB)
            graphs.append(latest(pair, BOB))
            row = bob_states.indices[bob_states.indptr[3] : bob_states.indptr[4]]
            cue = [f"concept:bob-{c}" for c in row[:2]]
            req = sleep_pb2.CompleteRequest(concept_ids=cue, strengths=[1.0] * len(cue))
            done = pair.sched.stub.Complete(req, metadata=BOB)
            completions.append((list(done.concept_ids), [round(s, 6) for s in done.strengths]))
        alone, beside = graphs
        assert alone.graph.index.ids == beside.graph.index.ids
        assert np.array_equal(alone.graph.weights.toarray(), beside.graph.weights.toarray())
        assert np.array_equal(alone.graph.biases, beside.graph.biases)
        assert completions[0] == completions[1]


class TestRecallThroughTheNamespacesGraph:
    def test_the_vault_completes_a_cue_through_the_recalling_namespaces_graph(
        self,
        start_scheduler: SchedulerFactory,
        make_settings: SettingsFactory,
        redis_url: str,
    ) -> None:
        """Bob's Recall completes through bob's graph (version 1, bob's concepts); alice's
        Recall of the same cue goes through alice's graph, which knows none of them."""
        vault_port = free_port()
        env = {"REDIS_URL": redis_url, "VAULT_GRPC_PORT": str(vault_port)}
        sched = start_scheduler(
            settings=make_settings(
                environ=env, sleep_scheduler={"pressure_threshold": 0, "lease_ttl_s": 5}
            )
        )
        vault_settings = make_settings(
            environ=env,
            vault={
                "backend": "memory",
                "embedding_dim": 8,
                "recall": {"scheduler_address": sched.target},
            },
        )
        server = ServerThread("episodic-vault", "episodic_vault", VaultService, vault_settings)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{vault_port}")
        try:
            pair = Pair(server, episodic_pb2_grpc.EpisodicVaultStub(channel), sched, redis_url, [])
            states = episodes(2)
            put(pair, states, "concept:bob-", BOB)
            consolidate(pair, BOB)
            row = states.indices[states.indptr[0] : states.indptr[1]]
            cue = [f"concept:bob-{c}" for c in row[: max(1, len(row) // 2)]]
            req = episodic_pb2.RecallRequest(
                cue=episodic_pb2.ConceptActivation(concept_ids=cue, strengths=[1.0] * len(cue))
            )
            mine = pair.vault.Recall(req, metadata=BOB, timeout=30)
            assert (mine.completion, mine.graph_version) == (episodic_pb2.COMPLETION_APPLIED, 1)
            assert all(c.startswith("concept:bob-") for c in mine.effective_cue.concept_ids)
            theirs = pair.vault.Recall(req, metadata=ALICE, timeout=30)
            assert theirs.graph_version == 0 and not theirs.hits
            assert sorted(theirs.effective_cue.concept_ids) == sorted(cue)
        finally:
            channel.close()
            server.stop()
