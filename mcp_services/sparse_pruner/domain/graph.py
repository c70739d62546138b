"""The concept graph as the pruner sees it: validation and edge-list conversions.

A graph is a symmetric ``scipy.sparse`` CSR weight matrix ``W`` (``N x N``, zero diagonal, finite)
with a bias vector ``b`` of shape ``(N,)``. The pruner works on its *undirected edges*: the pairs
``(i, j)`` with ``i < j`` and ``W[i, j] != 0``, each carried by one weight. Every function here
raises ``ValueError`` naming the argument and the fix when its input breaks that contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.int64]

# Relative asymmetry accepted as round-off from a consolidation that added W and W.T.
_SYMMETRY_RTOL = 1e-9


@dataclass(frozen=True)
class ConceptGraph:
    """A validated concept graph.

    Attributes:
        weights: CSR matrix of shape ``(N, N)``, symmetric, zero diagonal, no stored zeros.
        biases: float array of shape ``(N,)``.
    """

    weights: sp.csr_matrix
    biases: FloatArray

    @property
    def n_concepts(self) -> int:
        """Number of concepts ``N``."""
        return int(self.weights.shape[0])

    @property
    def n_edges(self) -> int:
        """Number of undirected edges (nonzero pairs ``i < j``)."""
        return int(self.weights.nnz // 2)

    def edges(self) -> tuple[IndexArray, IndexArray, FloatArray]:
        """Return ``(i, j, w)`` for every undirected edge, ``i < j``, in row-major order."""
        upper = sp.triu(self.weights, k=1, format="coo")
        order = np.lexsort((upper.col, upper.row))
        return (
            upper.row[order].astype(np.int64),
            upper.col[order].astype(np.int64),
            upper.data[order].astype(np.float64),
        )

    def weight_rms(self) -> float:
        """Root-mean-square of the nonzero weights (0.0 for an empty graph)."""
        data = self.weights.data
        return float(np.sqrt(np.mean(data * data))) if data.size else 0.0


def make_graph(weights: sp.csr_matrix | sp.csr_array, biases: NDArray[np.floating]) -> ConceptGraph:
    """Validate ``weights`` and ``biases`` and return them as a :class:`ConceptGraph`.

    Raises:
        ValueError: ``weights`` is not square, not symmetric, has a nonzero diagonal or a
            non-finite entry; ``biases`` has the wrong shape or a non-finite entry.
    """
    if not sp.issparse(weights):
        raise ValueError(
            "weights: expected a scipy.sparse matrix; wrap a dense array in sp.csr_matrix"
        )
    w = sp.csr_matrix(weights.tocsr().astype(np.float64))
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"weights: must be square, got shape {w.shape}")
    w.eliminate_zeros()
    w.sum_duplicates()
    if not np.all(np.isfinite(w.data)):
        raise ValueError("weights: contains NaN or inf; repair the graph before pruning")
    if np.any(w.diagonal() != 0.0):
        raise ValueError("weights: diagonal must be zero (no self-coupling); call setdiag(0)")
    asym = abs(w - w.T)
    scale = float(abs(w).max()) if w.nnz else 0.0
    if asym.nnz and float(asym.max()) > _SYMMETRY_RTOL * max(scale, 1e-300):
        raise ValueError("weights: must be symmetric; use (W + W.T) / 2")
    w = sp.csr_matrix((w + w.T) * 0.5)  # remove round-off asymmetry exactly
    w.eliminate_zeros()
    b = np.asarray(biases, dtype=np.float64)
    if b.shape != (w.shape[0],):
        raise ValueError(f"biases: expected shape ({w.shape[0]},), got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("biases: contains NaN or inf")
    w.sort_indices()
    return ConceptGraph(weights=w, biases=b.copy())


def check_prototypes(prototypes: NDArray[np.floating], n_concepts: int) -> FloatArray:
    """Return ``prototypes`` as a float ``(P, N)`` array of +-1 values.

    Raises:
        ValueError: wrong shape, no pattern, or a value other than -1 and +1.
    """
    xi = np.asarray(prototypes, dtype=np.float64)
    if xi.ndim != 2 or xi.shape[1] != n_concepts or xi.shape[0] == 0:
        raise ValueError(
            f"prototypes: expected shape (P, {n_concepts}) with P >= 1, got {xi.shape}"
        )
    if not np.all(np.abs(xi) == 1.0):
        raise ValueError("prototypes: entries must be -1 or +1; map active (>0.5) to +1, else -1")
    return xi


def graph_from_edges(
    n_concepts: int,
    edge_i: IndexArray,
    edge_j: IndexArray,
    values: FloatArray,
    biases: FloatArray,
) -> ConceptGraph:
    """Build the symmetric graph carrying ``values`` on the undirected edges ``(i, j)``.

    Zero values are dropped, so the result's support is where ``values != 0``.
    """
    keep = values != 0.0
    i, j, v = edge_i[keep], edge_j[keep], values[keep]
    upper = sp.coo_matrix((v, (i, j)), shape=(n_concepts, n_concepts))
    w = sp.csr_matrix(upper + upper.T)
    w.sort_indices()
    return ConceptGraph(weights=w, biases=np.asarray(biases, dtype=np.float64))
