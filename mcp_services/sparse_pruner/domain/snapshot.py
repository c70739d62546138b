"""One graph version as the pruner holds it, and the exact {0, 1} <-> +-1 conversion.

The SleepScheduler stores ``E(s) = -1/2 s^T W s - b^T s`` over ``s in {0, 1}^N``; the pruning
domain works over ``sigma = 2 s - 1 in {-1, +1}^N``. The local field that decides concept i at
temperature zero is the same number in both conventions when

    J = W / 2,    h = b + W 1 / 2        (so  W s + b = J sigma + h),

and back ``W = 2 J``, ``b = h - J 1``. The domain keeps ``h`` fixed while it changes ``J``, so a
pruned graph's {0, 1} biases move by ``(W - W') 1 / 2``: that is what keeps every concept's field
(and therefore recall and the fixed points the guard checked) exactly as the guard measured them.
The support of ``W'`` is inside that of ``W`` (pruning never adds an edge) and it stays symmetric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sparse_pruner.domain import ConceptGraph, make_graph

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.int64]


@dataclass(frozen=True)
class GraphSnapshot:
    """A graph version in the scheduler's {0, 1} convention.

    Attributes:
        version: the scheduler's version number (0: the empty graph).
        concept_ids: position i is row/column i.
        weights: ``(N, N)`` CSR, symmetric, zero diagonal.
        biases: ``(N,)``.
        prototypes: the stored memories, each the sorted positions of its active concepts.
        support: episodes merged into each prototype.
        created_at_ms, author, reason: the version's header.
    """

    version: int
    concept_ids: tuple[str, ...]
    weights: sp.csr_matrix
    biases: FloatArray
    prototypes: tuple[IndexArray, ...] = ()
    support: tuple[int, ...] = ()
    created_at_ms: int = 0
    author: str = ""
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_concepts(self) -> int:
        return len(self.concept_ids)

    @property
    def edge_count(self) -> int:
        return int(self.weights.nnz // 2)

    def upper_edges(self) -> tuple[IndexArray, IndexArray, FloatArray]:
        """``(i, j, w)`` of each undirected edge once, ``i < j``, row-major."""
        upper = sp.triu(self.weights, k=1, format="csr")
        upper.sort_indices()
        coo = upper.tocoo()
        return (
            coo.row.astype(np.int64),
            coo.col.astype(np.int64),
            coo.data.astype(np.float64),
        )

    def pm1_prototypes(self) -> FloatArray:
        """``(P, N)`` prototypes in +-1: +1 where the concept is active, else -1."""
        xi = -np.ones((len(self.prototypes), self.n_concepts))
        for k, active in enumerate(self.prototypes):
            xi[k, active] = 1.0
        return xi


def snapshot_from_edges(
    version: int,
    concept_ids: tuple[str, ...],
    biases: FloatArray,
    edge_i: IndexArray,
    edge_j: IndexArray,
    edge_w: FloatArray,
    **header: object,
) -> GraphSnapshot:
    """Build a snapshot from undirected edges ``i < j`` (zero weights dropped)."""
    n = len(concept_ids)
    keep = edge_w != 0.0
    upper = sp.coo_matrix((edge_w[keep], (edge_i[keep], edge_j[keep])), shape=(n, n))
    weights = sp.csr_matrix(upper + upper.T)
    weights.sort_indices()
    return GraphSnapshot(
        version=version,
        concept_ids=concept_ids,
        weights=weights,
        biases=np.asarray(biases, dtype=np.float64),
        **header,  # type: ignore[arg-type]
    )


def to_pm1(snapshot: GraphSnapshot) -> ConceptGraph:
    """The domain graph (``J``, ``h``) with the same local fields as ``snapshot``."""
    w = snapshot.weights
    j = sp.csr_matrix(w * 0.5)
    h = snapshot.biases + 0.5 * np.asarray(w.sum(axis=1)).ravel()
    return make_graph(j, h)


def from_pm1(graph: ConceptGraph, like: GraphSnapshot) -> GraphSnapshot:
    """The {0, 1} snapshot of a domain graph, with ``like``'s concepts and prototypes."""
    j = graph.weights
    w = sp.csr_matrix(j * 2.0)
    w.eliminate_zeros()
    w.sort_indices()
    b = graph.biases - np.asarray(j.sum(axis=1)).ravel()
    return GraphSnapshot(
        version=like.version,
        concept_ids=like.concept_ids,
        weights=w,
        biases=b,
        prototypes=like.prototypes,
        support=like.support,
    )
