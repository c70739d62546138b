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
