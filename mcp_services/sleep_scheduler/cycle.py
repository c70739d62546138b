"""One consolidation cycle over a stored graph: the glue between the store and the domain.

Pure numerics (no gRPC, no Redis): the consolidator runs :func:`run_cycle` on a worker thread.
The stored prototypes of the base version are rehearsed alongside the new episodes, voting with
their support, so new episodes do not overwrite older memories; the new version's prototypes are
the merged set (old and new), which is what the pruner's quality guard checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.adapters.graph_store import StoredGraph
from mcp_services.sleep_scheduler.domain import (
    ConceptActivation,
    ConceptGraph,
    ConsolidationConfig,
    CycleStats,
    consolidate_states,
    states_matrix,
)
from mcp_services.sleep_scheduler.domain.activations import index_for
from mcp_services.sleep_scheduler.domain.consolidation import EpochHook


@dataclass(frozen=True)
class CycleOutput:
    """What a cycle commits: the graph, its prototypes with their support, and the figures."""

    graph: ConceptGraph
    prototypes: sp.csr_matrix
    support: NDArray[np.int64]
    stats: CycleStats


def run_cycle(
    base: StoredGraph,
    episodes: Sequence[ConceptActivation],
    config: ConsolidationConfig,
    on_epoch: EpochHook | None = None,
) -> CycleOutput:
    """Consolidate ``episodes`` into ``base`` (its prototypes rehearsed); see module doc."""
    index = index_for(episodes, base.graph.index)
    graph = base.graph.resized(index)
    n = index.size
    old = base.prototypes
    rehearsal = sp.csr_matrix((old.data, old.indices, old.indptr), shape=(old.shape[0], n))
    weights = np.maximum(base.support.astype(np.float64), 1.0) if old.shape[0] else None
    out = consolidate_states(
        graph, states_matrix(episodes, index), config, rehearsal, weights, on_epoch
    )
    support = np.maximum(np.rint(out.prototypes.weights), 1).astype(np.int64)
    return CycleOutput(out.graph, out.prototypes.states, support, out.stats)
