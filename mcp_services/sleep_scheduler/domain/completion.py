"""Pattern completion: settle a concept cue into its nearest attractor (the vault's Recall).

The cue's active concepts (strength > 0.5) start on, everything else off, and the state settles at
T = 0 (deterministic, block-asynchronous sweeps that only ever lower the energy) until no concept
changes. Concepts the graph has never seen cannot take part and are reported as ``unknown``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mcp_services.sleep_scheduler.domain.activations import ConceptActivation, states_matrix
from mcp_services.sleep_scheduler.domain.anneal import AnnealSchedule, settle
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph


@dataclass(frozen=True)
class Completion:
    """A completed cue.

    Attributes:
        concept_ids: the active concepts of the attractor, in index order.
        added: concepts the completion switched on that the cue did not have.
        removed: cue concepts the completion switched off.
        unknown: cue concepts not in the graph's index (ignored).
        energy: energy of the attractor; ``cue_energy`` that of the cue's state.
        sweeps: T = 0 sweeps until no concept changed; ``settled`` False if the cap was hit.
    """

    concept_ids: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    unknown: tuple[str, ...]
    energy: float
    cue_energy: float
    sweeps: int
    settled: bool


def complete(
    graph: ConceptGraph, cue: ConceptActivation, max_sweeps: int = 100, seed: int = 0
) -> Completion:
    """Complete ``cue`` through ``graph`` at T = 0.

    Args:
        graph: the consolidated graph.
        cue: the concepts to start from (strength > 0.5 counts as on).
        max_sweeps: sweep cap (>= 1).
        seed: fixes the visiting order, so the answer is reproducible.

    Raises:
        ValueError: if ``max_sweeps`` < 1.
    """
    return complete_many(graph, [cue], max_sweeps, seed)[0]


def complete_many(
    graph: ConceptGraph, cues: Sequence[ConceptActivation], max_sweeps: int = 100, seed: int = 0
) -> list[Completion]:
    """:func:`complete` for a batch of cues, settled together (one touched block)."""
    if max_sweeps < 1:
        raise ValueError(f"max_sweeps={max_sweeps} must be >= 1")
    start = states_matrix(cues, graph.index)
    res = settle(graph, start, AnnealSchedule.zero(max_sweeps), np.random.default_rng(seed))
    e_cue = graph.energy(start)
    e_end = graph.energy(res.states)
    ids = graph.index.ids
    out: list[Completion] = []
    for i, cue in enumerate(cues):
        before = set(start.indices[start.indptr[i] : start.indptr[i + 1]].tolist())
        after = sorted(res.states.indices[res.states.indptr[i] : res.states.indptr[i + 1]])
        after_set = set(after)
        out.append(
            Completion(
                concept_ids=tuple(ids[j] for j in after),
                added=tuple(ids[j] for j in after if j not in before),
                removed=tuple(ids[j] for j in sorted(before - after_set)),
                unknown=tuple(c for c in cue.active_ids() if c not in graph.index),
                energy=float(e_end[i]),
                cue_energy=float(e_cue[i]),
                sweeps=res.sweeps,
                settled=res.settled,
            )
        )
    return out
