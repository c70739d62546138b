"""Edge colouring: split a graph's edges into matchings for parallel coordinate updates.

Two edges that share no endpoint touch disjoint concepts' fields, so their coordinate-descent steps
are independent and can run as one vectorised step with exactly the result of running them one
after the other. A proper edge colouring gives those batches. Any colouring is correct; fewer
colours only mean fewer (larger) numpy calls per sweep. Greedy colouring needs at most
``2 * max_degree - 1`` colours; this parallel variant (Luby-style local minima of random
priorities, then a greedy pass over what is left) stays close to that while running in numpy.
"""

from __future__ import annotations

import numpy as np

from .graph import IndexArray

# Rounds of local-minimum matching per colour before giving the colour up; each round grows the
# matching, and after a few the remaining candidates are few enough that more rounds cost more
# than the colours they save.
_ROUNDS_PER_COLOR = 3


def color_edges(
    edge_i: IndexArray, edge_j: IndexArray, n_vertices: int, seed: int = 0
) -> IndexArray:
    """Return ``(E,)`` colours such that edges of one colour share no endpoint.

    Args:
        edge_i, edge_j: endpoints of ``E`` undirected edges, values in ``[0, n_vertices)``,
            no self-loops.

    Raises:
        ValueError: mismatched lengths or a self-loop.
    """
    if edge_i.shape != edge_j.shape:
        raise ValueError("edge_i, edge_j: must have the same shape")
    if np.any(edge_i == edge_j):
        raise ValueError("edge_i, edge_j: self-loops cannot be coloured; zero the diagonal")
    n_edges = int(edge_i.size)
    colors = np.full(n_edges, -1, dtype=np.int64)
    priority = np.random.default_rng(seed).permutation(n_edges).astype(np.int64)
    uncolored = np.arange(n_edges)
    color = 0
    best = np.empty(n_vertices, dtype=np.int64)
    free = np.empty(n_vertices, dtype=bool)
    while uncolored.size:
        free.fill(True)
        cand = uncolored
        for _ in range(_ROUNDS_PER_COLOR):
            a, b, p = edge_i[cand], edge_j[cand], priority[cand]
            best.fill(n_edges)
            np.minimum.at(best, a, p)
            np.minimum.at(best, b, p)
            win = (best[a] == p) & (best[b] == p)
            chosen = cand[win]
            colors[chosen] = color
            free[edge_i[chosen]] = False
            free[edge_j[chosen]] = False
            cand = cand[~win]
            cand = cand[free[edge_i[cand]] & free[edge_j[cand]]]
            if not cand.size:
                break
        color += 1
        uncolored = uncolored[colors[uncolored] < 0]
    return colors


def color_classes(colors: IndexArray) -> list[IndexArray]:
    """Return the edge indices of each colour, largest classes first (better vectorisation)."""
    if not colors.size:
        return []
    order = np.argsort(colors, kind="stable")
    bounds = np.flatnonzero(np.diff(colors[order])) + 1
    classes = np.split(order, bounds)
    classes.sort(key=lambda c: -c.size)
    return classes
