"""Edge usage: how much each edge does for the memories the graph stores.

In the +-1 convention (see snapshot.py) edge ``(i, j)`` with coupling ``J_ij = W_ij / 2`` lowers
the energy of prototype ``xi`` by ``J_ij xi_i xi_j``. Its usage is the mean of that over the
stored prototypes: large and positive for an edge that deepens the stored attractors, near zero
for one that does nothing for them (first to go), negative for one that works against them.
``support_fraction`` is the fraction of prototypes whose pattern agrees with the edge's sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcp_services.sparse_pruner.domain.snapshot import FloatArray, GraphSnapshot, IndexArray

# Edges per block, so (P, block) temporaries stay small on graphs of millions of edges.
_BLOCK = 65_536


@dataclass(frozen=True)
class EdgeUsageTable:
    """Usage of the selected edges, least used first."""

    edge_i: IndexArray
    edge_j: IndexArray
    weights: FloatArray
    usage: FloatArray
    support_fraction: FloatArray
    total_edges: int


def edge_usage(graph: GraphSnapshot, limit: int, concept: int | None = None) -> EdgeUsageTable:
    """The ``limit`` least used edges (of those touching ``concept`` when given).

    With no prototypes every edge has usage 0 and support 0 (nothing is stored to use it).
    """
    ei, ej, w = graph.upper_edges()
    if concept is not None:
        sel = (ei == concept) | (ej == concept)
        ei, ej, w = ei[sel], ej[sel], w[sel]
    xi = graph.pm1_prototypes()
    if xi.shape[0] and ei.size:
        mean_agree = np.empty(ei.size)  # mean over prototypes of xi_i xi_j, in [-1, 1]
        for lo in range(0, ei.size, _BLOCK):
            a, b = ei[lo : lo + _BLOCK], ej[lo : lo + _BLOCK]
            mean_agree[lo : lo + _BLOCK] = np.einsum("pe,pe->e", xi[:, a], xi[:, b]) / xi.shape[0]
        usage = 0.5 * w * mean_agree
        # xi_i xi_j is +-1, so the fraction agreeing with sign(w) is (1 + sign(w) * mean) / 2.
        support = 0.5 * (1.0 + np.sign(w) * mean_agree)
    else:
        usage = np.zeros(ei.size)
        support = np.zeros(ei.size)
    order = np.lexsort((np.abs(w), usage))[:limit]
    return EdgeUsageTable(
        edge_i=ei[order],
        edge_j=ej[order],
        weights=w[order],
        usage=usage[order],
        support_fraction=support[order],
        total_edges=int(ei.size),
    )
