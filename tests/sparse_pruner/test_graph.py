"""Tests of graph validation and edge-list conversion."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.sparse_pruner.domain import graph_from_edges, make_graph


def _dense(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.triu(rng.standard_normal((n, n)) * (rng.random((n, n)) < 0.3), k=1)
    return a + a.T


class TestMakeGraph:
    """make_graph accepts symmetric zero-diagonal CSR weights and refuses the rest."""

    def test_edges_round_trip(self) -> None:
        """edges() then graph_from_edges() rebuilds the same matrix."""
        graph = make_graph(sp.csr_matrix(_dense(12, 0)), np.zeros(12))
        i, j, w = graph.edges()
        assert np.all(i < j)
        again = graph_from_edges(12, i, j, w, graph.biases)
        assert (again.weights - graph.weights).count_nonzero() == 0
        assert graph.n_edges == i.size

    @pytest.mark.parametrize(
        ("matrix", "biases", "match"),
        [
            (sp.csr_matrix(np.triu(np.ones((4, 4)), k=1)), np.zeros(4), "symmetric"),
            (sp.csr_matrix(np.eye(4)), np.zeros(4), "diagonal"),
            (sp.csr_matrix(np.ones((3, 4))), np.zeros(3), "square"),
            (sp.csr_matrix(np.zeros((4, 4))), np.zeros(3), "biases"),
            (sp.csr_matrix(np.zeros((4, 4))), np.array([0.0, np.nan, 0.0, 0.0]), "biases"),
        ],
        ids=["asymmetric", "diagonal", "not-square", "bias-shape", "bias-nan"],
    )
    def test_refuses_bad_input(self, matrix: sp.csr_matrix, biases: np.ndarray, match: str) -> None:
        """Each broken contract raises ValueError saying which."""
        with pytest.raises(ValueError, match=match):
            make_graph(matrix, biases)

    def test_refuses_dense_input(self) -> None:
        """A dense array is refused with the conversion to use."""
        with pytest.raises(ValueError, match="csr_matrix"):
            make_graph(np.zeros((3, 3)), np.zeros(3))  # type: ignore[arg-type]
