"""The concept graph: a sparse symmetric energy model over binary concept states.

``E(s) = -1/2 s^T W s - b^T s`` with ``s in {0, 1}^N`` (see :mod:`.activations` for why {0, 1}),
``W`` a scipy CSR matrix (symmetric, zero diagonal, never densified over all N concepts here) and
``b`` a dense bias vector. The local field of concept i is ``h_i = (W s)_i + b_i``; at temperature
zero a concept is active exactly when its field is positive.

Temperatures throughout the package are relative to the *normalised local field*
``h_i / scale_i`` where ``scale_i = sqrt(a (1 - a)) ||W_i||_2`` is the standard deviation of unit
i's field under random binary states of the activity ``a`` the graph stores (``1/2 ||W_i||`` for
dense states, ``a = 1/2``; a consolidation cycle uses its replays' mean activity). This makes a
temperature mean the same thing whatever the number of concepts, the sparsity of the states or
the overall size of the weights (the learning rule is scale-free).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.domain.concept_index import ConceptIndex
from mcp_services.sleep_scheduler.domain.kernels import quadratic_forms

FloatArray = NDArray[np.float64]

_SYMMETRY_TOL = 1e-9


def _as_csr(states: sp.spmatrix | sp.sparray | NDArray[np.floating]) -> sp.csr_matrix:
    if sp.issparse(states):
        return sp.csr_matrix(states).astype(np.float64)  # type: ignore[arg-type]
    arr = np.asarray(states, dtype=np.float64)
    return sp.csr_matrix(arr.reshape(1, -1) if arr.ndim == 1 else arr)


@dataclass(frozen=True)
class ConceptGraph:
    """A versioned energy model over the concepts of ``index``.

    Args:
        index: the concept index; position i is row/column i of ``weights``.
        weights: (N, N) CSR matrix, symmetric, zero diagonal, finite.
        biases: (N,) float64 array, finite.
        version: monotonically increasing graph version (the service assigns it).

    Raises:
        ValueError: on a shape mismatch, asymmetry, a non-zero diagonal or non-finite values.
    """

    index: ConceptIndex
    weights: sp.csr_matrix
    biases: FloatArray
    version: int = 0

    def __post_init__(self) -> None:
        n = self.index.size
        if self.weights.shape != (n, n):
            raise ValueError(
                f"weights has shape {self.weights.shape} but the index has {n} concepts: "
                "resize the graph with ConceptGraph.resized"
            )
        if self.biases.shape != (n,):
            raise ValueError(f"biases has shape {self.biases.shape}: expected ({n},)")
        if not (np.all(np.isfinite(self.weights.data)) and np.all(np.isfinite(self.biases))):
            raise ValueError("weights or biases hold NaN/inf: rebuild the graph from finite values")
        if n and np.any(self.weights.diagonal() != 0.0):
            raise ValueError("weights has a non-zero diagonal: a concept may not couple to itself")
        asym = self.weights - self.weights.T
        if asym.nnz and np.max(np.abs(asym.data)) > _SYMMETRY_TOL:
            raise ValueError("weights is not symmetric: pass (W + W.T) / 2")

    @classmethod
    def empty(cls, index: ConceptIndex, version: int = 0) -> ConceptGraph:
        """A graph with no edges and zero biases over ``index``."""
        n = index.size
        return cls(index, sp.csr_matrix((n, n), dtype=np.float64), np.zeros(n), version)

    @classmethod
    def from_pm1_couplings(
        cls, index: ConceptIndex, couplings: sp.spmatrix | sp.sparray | FloatArray
    ) -> ConceptGraph:
        """The {0, 1} graph equivalent to a ±1 network with symmetric ``couplings`` J, no bias.

        With ``sigma = 2 s - 1`` the ±1 field ``J sigma`` equals ``2 J s - J 1``, so ``W = 2 J``
        and ``b = -J 1`` give the same zero-temperature dynamics (used for Hebbian baselines).
        """
        j = sp.csr_matrix(couplings).astype(np.float64)  # type: ignore[arg-type]
        j.setdiag(0.0)
        j.eliminate_zeros()
        return cls(index, sp.csr_matrix(2.0 * j), -np.asarray(j.sum(axis=1)).ravel())

    @property
    def size(self) -> int:
        """Number of concepts N."""
        return self.index.size

    @property
    def edge_count(self) -> int:
        """Number of undirected edges (non-zero weights above the diagonal)."""
        return int(self.weights.nnz // 2)

    def resized(self, index: ConceptIndex) -> ConceptGraph:
        """This graph over a grown ``index`` (new concepts start unconnected with zero bias).

        Raises:
            ValueError: if ``index`` does not start with this graph's ids.
        """
        if index is self.index:
            return self
        n = self.size
        if index.ids[:n] != self.index.ids:
            raise ValueError("index must extend the graph's index: build it with .extended(...)")
        m = index.size
        w = sp.csr_matrix(
            (self.weights.data, self.weights.indices, self.weights.indptr.copy()), shape=(n, m)
        )
        w = sp.vstack([w, sp.csr_matrix((m - n, m))], format="csr")
        return ConceptGraph(index, w, np.concatenate([self.biases, np.zeros(m - n)]), self.version)

    def local_fields(self, states: sp.spmatrix | sp.sparray | FloatArray) -> FloatArray:
        """Fields ``s W + b`` of each state row, dense (B, N): keep B small on large graphs."""
        s = _as_csr(states)
        return np.asarray((s @ self.weights).toarray()) + self.biases

    def energy(self, states: sp.spmatrix | sp.sparray | FloatArray) -> FloatArray:
        """``E(s) = -1/2 s^T W s - b^T s`` for each {0, 1} state row; returns shape (B,).

        Costs at most O(active concepts x their degree) per row: the states stay sparse, and
        no (B, N) product is formed (:func:`.kernels.quadratic_forms`).
        """
        s = _as_csr(states)
        if s.shape[1] != self.size:
            raise ValueError(f"states have {s.shape[1]} columns: expected {self.size}")
        s.sum_duplicates()
        quad = quadratic_forms(self.weights, s)
        lin = s @ self.biases
        return np.asarray(-0.5 * quad - lin, dtype=np.float64)

    def field_scales(self, activity: float = 0.5) -> FloatArray:
        """Per-concept field scale ``sqrt(a (1 - a)) ||W_i||_2``, floored for isolated units.

        The standard deviation of unit i's field under random states of activity ``a`` (the
        share of concepts active, in (0, 0.5]; 0.5 gives the module doc's ``1/2 ||W_i||``). A
        concept without edges gets the median scale of the connected ones (1.0 in an empty
        graph) so its temperature still means something.

        Raises:
            ValueError: if ``activity`` is outside (0, 0.5].
        """
        if not 0.0 < activity <= 0.5:
            raise ValueError(f"activity={activity} must be in (0, 0.5], e.g. 0.5 for dense states")
        sq = np.asarray(self.weights.multiply(self.weights).sum(axis=1)).ravel()
        return scales_of(sq, activity)

    def with_update(
        self, delta_w: sp.spmatrix | sp.sparray, delta_b: FloatArray, version: int | None = None
    ) -> ConceptGraph:
        """A new graph ``W + delta_w`` (symmetrised, diagonal zeroed), ``b + delta_b``."""
        d = sp.csr_matrix(delta_w).astype(np.float64)  # type: ignore[call-overload]
        w = self.weights + 0.5 * (d + d.T)
        w = sp.csr_matrix(w)
        w.setdiag(0.0)
        w.eliminate_zeros()
        w.sort_indices()
        return ConceptGraph(
            self.index, w, self.biases + delta_b, self.version if version is None else version
        )

    def to_arrays(self) -> dict[str, NDArray[np.generic]]:
        """Arrays that persist the graph with its index (e.g. for ``numpy.savez``)."""
        w = self.weights
        return {
            "concept_ids": np.asarray(self.index.ids, dtype=np.str_),
            "w_data": w.data,
            "w_indices": w.indices,
            "w_indptr": w.indptr,
            "biases": self.biases,
            "version": np.asarray(self.version, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray[np.generic]]) -> ConceptGraph:
        """Inverse of :meth:`to_arrays`.

        Raises:
            ValueError: if a key is missing or the arrays are inconsistent.
        """
        missing = {"concept_ids", "w_data", "w_indices", "w_indptr", "biases", "version"} - set(
            arrays
        )
        if missing:
            raise ValueError(f"arrays lack {sorted(missing)}: pass what to_arrays returned")
        index = ConceptIndex(tuple(str(c) for c in arrays["concept_ids"].tolist()))
        n = index.size
        w = sp.csr_matrix(
            (
                np.asarray(arrays["w_data"], dtype=np.float64),
                np.asarray(arrays["w_indices"]),
                np.asarray(arrays["w_indptr"]),
            ),
            shape=(n, n),
        )
        return cls(index, w, np.asarray(arrays["biases"], dtype=np.float64), int(arrays["version"]))


def scales_of(row_sq: FloatArray, activity: float) -> FloatArray:
    """Field scales from each row's sum of squared weights (:meth:`ConceptGraph.field_scales`)."""
    scales = np.sqrt(activity * (1.0 - activity) * row_sq)
    connected = scales > 0
    floor = float(np.median(scales[connected])) if np.any(connected) else 1.0
    return np.where(connected, scales, floor)
