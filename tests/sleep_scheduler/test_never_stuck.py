"""Consolidation never gets stuck: unstructured nights first, structure learned afterwards (issue 14).

Unstructured episodes are what ``vault-cli put-get-loop`` writes (3-12 random concepts out of
500 with random strengths); structured ones are planted sparse assemblies over the same concept
ids, seen as 5 noisy copies each. Cycles chain as the service chains them: each rehearses the
prototypes (and their weights) the previous one returned.
"""

from __future__ import annotations

import random

import numpy as np
import scipy.sparse as sp

from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.domain import (
    ConceptActivation,
    ConceptGraph,
    ConceptIndex,
    ConsolidationResult,
    consolidate,
)
from mcp_services.sleep_scheduler.domain.activations import states_matrix
from mcp_services.sleep_scheduler.domain.completion import complete_states
from mcp_services.sleep_scheduler.domain.planted import planted_sparse
from mcp_services.sleep_scheduler.domain.prototypes import phi_overlap
from mcp_services.sleep_scheduler.domain.quality import RECALL_OVERLAP
from mcp_services.sleep_scheduler.domain.wake_sleep import swap_noise
from tests.sleep_scheduler.conftest import Pair, PairFactory

CONCEPTS = 300


def loop_episodes(count: int, seed: int) -> list[ConceptActivation]:
    """Episodes shaped like put-get-loop's: random concepts, random strengths."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        concepts = rng.sample(range(500), rng.randint(3, 12))
        out.append(
            ConceptActivation(
                tuple(f"concept:{c}" for c in concepts), tuple(rng.random() for _ in concepts)
            )
        )
    return out


def activations(states: sp.csr_matrix) -> list[ConceptActivation]:
    rows = [states.indices[states.indptr[r] : states.indptr[r + 1]] for r in range(states.shape[0])]
    return [ConceptActivation(tuple(f"concept:{j}" for j in r), (1.0,) * len(r)) for r in rows]


def cycle(
    prev: ConsolidationResult | None, episodes: list[ConceptActivation]
) -> ConsolidationResult:
    if prev is None:
        return consolidate(ConceptGraph.empty(ConceptIndex()), episodes)
    return consolidate(
        prev.graph, episodes, rehearsal=prev.prototypes, rehearsal_weights=prev.prototype_weights
    )


def planted_recall(result: ConsolidationResult, patterns: sp.csr_matrix) -> float:
    """Recall of the planted patterns through completion (what Complete answers): cues with 10%
    of the members swapped, completed with the cycle's graph and prototypes, count when they
    reach phi >= 0.95 with their pattern."""
    g = result.graph
    ids = [f"concept:{j}" for j in range(CONCEPTS)]
    pos = np.array([g.index.positions([c])[0] if c in g.index else -1 for c in ids])
    coo = patterns.tocoo()
    seen = pos[coo.col] >= 0  # a member no episode showed cannot be recalled by any graph
    mapped = sp.csr_matrix(
        (coo.data[seen], (coo.row[seen], pos[coo.col[seen]])), shape=(patterns.shape[0], g.size)
    )
    cues = swap_noise(mapped, 0.1, np.arange(g.size, dtype=np.int64), np.random.default_rng(1))
    protos = states_matrix(result.prototypes, g.index)
    done, _, _, _ = complete_states(g, cues, prototypes=protos)
    return float(np.mean(phi_overlap(done, mapped, g.size) >= RECALL_OVERLAP))


PLANTED = planted_sparse(CONCEPTS, 20, activity=(0.05, 0.08), seed=5)


class TestNeverStuck:
    def test_fresh_graph_learns_the_planted_assemblies(self) -> None:
        """The reference: on a fresh graph the assemblies become attractors (recall >= 0.95)."""
        out = cycle(None, activations(PLANTED.episodes))
        assert out.stats.edges_after > 0
        assert out.stats.energy_delta < 0
        assert planted_recall(out, PLANTED.patterns) >= 0.95

    def test_one_unstructured_cycle_first_does_not_block_learning(self) -> None:
        """After one put-get-loop night, the structure is learned to the fresh-graph bar."""
        noise = cycle(None, loop_episodes(50, seed=1))
        out = cycle(noise, activations(PLANTED.episodes))
        assert out.stats.edges_after > noise.stats.edges_after
        assert out.stats.energy_delta < 0
        assert planted_recall(out, PLANTED.patterns) >= 0.95

    def test_five_unstructured_cycles_first_do_not_block_learning(self) -> None:
        """After five put-get-loop nights, the structure is learned to the fresh-graph bar."""
        prev: ConsolidationResult | None = None
        for night in range(5):
            prev = cycle(prev, loop_episodes(50, seed=10 + night))
        out = cycle(prev, activations(PLANTED.episodes))
        assert out.stats.edges_after > 0
        assert out.stats.energy_delta < 0
        assert planted_recall(out, PLANTED.patterns) >= 0.95

    def test_an_unstructured_cycle_says_so_and_learns_nothing(self) -> None:
        """Random episodes form no prototype; the cycle notes no_structure and keeps the graph."""
        out = cycle(None, loop_episodes(50, seed=2))
        assert out.prototypes == ()
        assert out.stats.learned is False
        assert any(n.startswith("no_structure:") for n in out.stats.notes)
        assert out.stats.edges_after == 0 and out.stats.energy_delta == 0.0


class TestFading:
    def test_unreinforced_prototypes_fade_and_are_dropped_with_a_note(self) -> None:
        """Prototypes of 5 episodes no later episode joins lose 10% a cycle, then go (noted)."""
        first = cycle(None, activations(PLANTED.episodes))
        assert first.prototype_weights == (5.0,) * 20
        other = planted_sparse(CONCEPTS, 10, activity=(0.05, 0.08), seed=6)
        other_eps = [
            ConceptActivation(
                tuple(c.replace("concept:", "other:") for c in a.concept_ids), a.strengths
            )
            for a in activations(other.episodes)
        ]
        prev = cycle(first, other_eps)
        old = [w for w in prev.prototype_weights if w < 5.0]
        assert old == [4.5] * 20 and prev.stats.prototypes_faded == 0
        for _ in range(4):
            prev = cycle(prev, other_eps)
        assert prev.stats.prototypes_faded == 20
        assert any(n.startswith("faded: 20 ") for n in prev.stats.notes)
        assert len(prev.prototypes) == 10

    def test_reinforced_prototypes_do_not_fade(self) -> None:
        """Prototypes the new episodes join keep (and grow) their weight."""
        first = cycle(None, activations(PLANTED.episodes))
        again = cycle(first, activations(PLANTED.episodes))
        assert len(again.prototypes) == 20
        assert all(w >= 5.0 for w in again.prototype_weights)


def service_recall(pair: Pair, patterns: sp.csr_matrix) -> float:
    """Recall of the planted patterns through the Complete RPC (cues with 10% swapped)."""
    cues = swap_noise(patterns, 0.1, np.arange(CONCEPTS, dtype=np.int64), np.random.default_rng(1))
    hits = 0
    for r in range(patterns.shape[0]):
        ids = [f"concept:{j}" for j in cues.indices[cues.indptr[r] : cues.indptr[r + 1]]]
        resp = pair.sched.stub.Complete(
            sleep_pb2.CompleteRequest(concept_ids=ids, strengths=[1.0] * len(ids))
        )
        got = sp.csr_matrix(
            (
                np.ones(len(resp.concept_ids)),
                [int(c.split(":")[1]) for c in resp.concept_ids if c.startswith("concept:")],
                [0, len(resp.concept_ids)],
            ),
            shape=(1, CONCEPTS),
        )
        hits += int(phi_overlap(got, patterns[r], CONCEPTS)[0] >= RECALL_OVERLAP)
    return hits / patterns.shape[0]


def consolidate_now(pair: Pair) -> sleep_pb2.ConsolidationJob:
    job: sleep_pb2.ConsolidationJob = pair.sched.stub.StartConsolidation(
        sleep_pb2.StartConsolidationRequest(wait=True, trigger="test"), timeout=120
    )
    assert job.state == sleep_pb2.JOB_STATE_SUCCEEDED, job.error
    return job


def loop_states(count: int, seed: int) -> sp.csr_matrix:
    """put-get-loop episodes as states over 500 concepts (their active concepts only)."""
    eps = loop_episodes(count, seed)
    rows = [sorted(int(c.split(":")[1]) for c in e.active_ids()) for e in eps]
    rows = [r or [0] for r in rows]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    idx = np.concatenate([np.asarray(r) for r in rows])
    return sp.csr_matrix((np.ones(len(idx)), idx, indptr), shape=(count, 500))


class TestNeverStuckThroughTheService:
    def test_a_put_get_loop_night_then_structure_through_vault_and_scheduler(
        self, start_pair: PairFactory
    ) -> None:
        """Vault -> StartConsolidation over put-get-loop episodes, then over the planted
        assemblies: edges form, energy_delta < 0, Complete recalls >= 0.95 of them."""
        pair = start_pair()
        pair.put_states(loop_states(50, seed=7))
        first = consolidate_now(pair)
        assert first.prototypes == 0 and any(n.startswith("no_structure") for n in first.notes)
        pair.put_states(PLANTED.episodes)
        second = consolidate_now(pair)
        stats = pair.sched.stub.GetGraphStats(sleep_pb2.GetGraphStatsRequest())
        assert stats.header.edge_count > 0 and second.energy_delta < 0
        assert second.prototypes == 20
        assert service_recall(pair, PLANTED.patterns) >= 0.95
