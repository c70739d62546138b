"""Splitting clusters of correlated classes apart: bisect while the halves are distinct classes.

The leader pass of :mod:`.prototypes` joins an episode to a cluster at phi >= 0.3, which keeps
unrelated assemblies apart but lumps *correlated* classes together: two siblings that share 80%
of their members have phi ~ 0.7, more than two noisy copies of one class at low activity. Their
majority vote is then a blend that belongs to neither (issue 14: 6-10 prototypes for 10 classes).

Each cluster is therefore bisected (weighted 2-means on its own concepts, started from the member
farthest from the mean and the member farthest from that one) and the halves are kept apart when
they are *distinct classes*: their majority votes differ in more concepts than a member differs,
on average, from its own half's vote. That is the within-class spread against the between-class
distance, in the same units (concepts):

* noisy copies of one class: a forced bisection gives two votes that both denoise to the class
  (they differ in a concept or two), while a member differs from its vote by its noise (e.g. 4 of
  64 concepts at 30% activity with 10% of its members swapped): kept together;
* two siblings differing in 8 concepts with the same noise: votes 8 apart, members 4 from theirs:
  split. The halves are split again until no half splits.

A half must carry at least ``min_weight`` of episode weight: a class is not established by one
or two episodes (and a cluster lighter than twice that is never bisected, which also keeps the
cost of a cycle over many small clusters where it was). Rehearsed prototypes are rows with their
support as weight; a clean prototype sits at distance 0 from its vote, so a new sibling beside it
splits off more readily than a new noisy copy of the same class, which votes back to it.

Cost: per bisected cluster, a few passes over its rows restricted to the concepts its members
use (dense (m, k) blocks); clusters are bisected about log2(classes) times deep.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

DEFAULT_MIN_WEIGHT = 3.0
"""Episode weight a split-off half needs: three sightings establish a class."""

SEPARATION = 0.5
"""Share of a member's spread by which two class means must differ (beyond noise)."""

MIN_GAP = 1.5
"""Least (squared) distance of two class means beyond noise: more than one concept. A class is
not one concept away from another: a group of episodes that all lost the same member to noise
(exact-count swap noise makes such groups) differs from its class in one concept only."""
_ITERATIONS = 12
_LOOK_AHEAD = 2
"""Levels bisected below a split that looks like one class before believing it."""
_MAX_ROWS = 4096
"""Rows of one cluster bisected at once; larger clusters are bisected on a strided sample."""


def _spread(x: NDArray[np.float64], w: NDArray[np.float64]) -> tuple[NDArray[np.float64], float]:
    """Weighted mean of dense rows and the unbiased mean squared distance of a row to it."""
    total = float(w.sum())
    mean = w @ x / total
    sq = float(w @ ((x - mean) ** 2).sum(axis=1)) / total
    n_eff = total**2 / float(w @ w)
    return mean, sq * n_eff / (n_eff - 1.0) if n_eff > 1.0 + 1e-9 else 0.0


def distinct(
    gap: float,
    spreads: tuple[float, float],
    masses: tuple[float, float],
    n_effs: tuple[float, float],
) -> bool:
    """Whether two groups are distinct classes: their means are farther apart than a member is
    from its own mean (see module doc).

    ``gap`` is the squared distance of the two weighted means; ``spreads`` the groups' unbiased
    mean squared distances of a member to its mean; the gap is first cleared of the part noise
    alone gives it (``spread (1/n_a + 1/n_b)``).
    """
    (sa, sb), (ma, mb), (na, nb) = spreads, masses, n_effs
    known = [(s, m) for s, m, n in ((sa, ma, na), (sb, mb, nb)) if n > 1.0 + 1e-9]
    if not known:
        return gap > 0.0
    pooled = sum(s * m for s, m in known) / sum(m for _, m in known)
    return gap - pooled * (1.0 / na + 1.0 / nb) > max(SEPARATION * pooled, MIN_GAP)


def _n_eff(w: NDArray[np.float64]) -> float:
    return float(w.sum()) ** 2 / float(w @ w)


def _bisect(
    x: NDArray[np.float64], w: NDArray[np.float64]
) -> tuple[NDArray[np.bool_], bool] | None:
    """Weighted 2-means of dense rows ``x``: (side of each row, distinct classes?) or None."""
    mean = w @ x / w.sum()
    d0 = ((x - mean) ** 2).sum(axis=1)
    a = int(np.argmax(d0))
    da = ((x - x[a]) ** 2).sum(axis=1)
    b = int(np.argmax(da))
    if da[b] == 0.0:
        return None  # all rows identical
    ca, cb = x[a].copy(), x[b].copy()
    side = np.zeros(len(x), dtype=bool)
    for it in range(_ITERATIONS):
        new = ((x - cb) ** 2).sum(axis=1) < ((x - ca) ** 2).sum(axis=1)
        if not new.any() or new.all():
            return None
        if it and np.array_equal(new, side):
            break
        side = new
        ca = w[~side] @ x[~side] / w[~side].sum()
        cb = w[side] @ x[side] / w[side].sum()
    ma, sa = _spread(x[~side], w[~side])
    mb, sb = _spread(x[side], w[side])
    gap = float(((ma - mb) ** 2).sum())
    ok = distinct(
        gap,
        (sa, sb),
        (float(w[~side].sum()), float(w[side].sum())),
        (_n_eff(w[~side]), _n_eff(w[side])),
    )
    return side, ok


def _has_classes(
    x: NDArray[np.float64], w: NDArray[np.float64], min_weight: float, depth: int
) -> bool:
    """True if bisecting ``x`` (recursively, ``depth`` more levels) finds two distinct classes."""
    if w.sum() < 2 * min_weight:
        return False
    found = _bisect(x, w)
    if found is None:
        return False
    side, ok = found
    if min(w[side].sum(), w[~side].sum()) < min_weight:
        return False
    if ok:
        return True
    return depth > 0 and any(
        _has_classes(x[half], w[half], min_weight, depth - 1) for half in (side, ~side)
    )


def _split_side(
    x: NDArray[np.float64], w: NDArray[np.float64], min_weight: float
) -> NDArray[np.bool_] | None:
    """The bisection of a cluster to keep, or None when it holds one class."""
    found = _bisect(x, w)
    if found is None:
        return None
    side, ok = found
    if min(w[side].sum(), w[~side].sum()) < min_weight:
        return None
    if ok:
        return side
    # Halves that each blend several siblings have means near their common parent and look
    # alike; look further down before calling the cluster one class.
    if any(_has_classes(x[half], w[half], min_weight, _LOOK_AHEAD - 1) for half in (side, ~side)):
        return side
    return None


def split_clusters(
    episodes: sp.csr_matrix,
    labels: NDArray[np.int64],
    weights: NDArray[np.float64],
    min_weight: float = DEFAULT_MIN_WEIGHT,
) -> NDArray[np.int64]:
    """Labels with every cluster bisected while it holds distinct classes (module doc).

    Args:
        episodes: (E, N) CSR {0, 1} rows.
        labels: (E,) cluster of each row, 0..K-1.
        weights: (E,) positive vote weight of each row.
        min_weight: episode weight each half of a split needs (> 0).

    Returns:
        (E,) new labels, 0..K'-1 with K' >= K.

    Raises:
        ValueError: if ``min_weight`` is not positive.
    """
    if not min_weight > 0.0:
        raise ValueError(f"min_weight={min_weight} must be > 0, e.g. 3")
    out = labels.astype(np.int64, copy=True)
    if len(out) == 0:
        return out
    order = np.argsort(out, kind="stable")
    bounds = np.flatnonzero(np.diff(out[order])) + 1
    queue = [grp for grp in np.split(order, bounds) if weights[grp].sum() >= 2 * min_weight]
    next_label = int(out.max()) + 1
    while queue:
        rows = queue.pop()
        if len(rows) > _MAX_ROWS:
            rows = rows[np.linspace(0, len(rows) - 1, _MAX_ROWS).astype(np.int64)]
        sub = episodes[rows]
        cols = np.unique(sub.indices)
        if len(cols) == 0:
            continue
        dense = np.asarray(sub[:, cols].toarray(), dtype=np.float64)
        side = _split_side(dense, weights[rows], min_weight)
        if side is None:
            continue
        moved = rows[side]
        out[moved] = next_label
        next_label += 1
        for half in (rows[~side], moved):
            if weights[half].sum() >= 2 * min_weight:
                queue.append(half)
    _, dense_labels = np.unique(out, return_inverse=True)
    return dense_labels.astype(np.int64)


def merge_alike(
    episodes: sp.csr_matrix, labels: NDArray[np.int64], weights: NDArray[np.float64]
) -> NDArray[np.int64]:
    """Merge clusters that are not distinct classes (:func:`distinct`), closest pairs first.

    Only pairs of clusters whose members share an active concept are compared (sparse), and
    each round merges disjoint pairs, so clusters of unrelated assemblies cost one pass.
    """
    out = labels.copy()
    sq_rows = np.asarray(episodes.multiply(episodes).sum(axis=1)).ravel()
    # Spreads are those of the clusters as they came in, carried (mass-weighted) through merges:
    # a merged pair's own spread would include the distance between them, and with it every
    # later comparison would look alike and the merging would chain.
    spread = np.zeros(0)
    known = np.zeros(0)
    while True:
        k = int(out.max()) + 1 if len(out) else 0
        if k < 2:
            return out
        member = sp.csr_matrix((weights, (out, np.arange(len(out)))), shape=(k, len(out)))
        mass = np.asarray(member.sum(axis=1)).ravel()
        n_eff = mass**2 / np.asarray(member.multiply(member).sum(axis=1)).ravel()
        means = sp.csr_matrix(sp.diags(1.0 / mass) @ (member @ episodes))
        mean_sq = np.asarray(means.multiply(means).sum(axis=1)).ravel()
        if len(spread) == 0:
            raw = (member @ sq_rows) / mass - mean_sq
            has = n_eff > 1.0 + 1e-9
            spread = np.where(has, raw * n_eff / np.where(has, n_eff - 1.0, 1.0), 0.0)
            known = np.where(has, mass, 0.0)
        cross = sp.coo_matrix(means @ means.T)
        upper = cross.row < cross.col
        a, b = cross.row[upper].astype(np.int64), cross.col[upper].astype(np.int64)
        gap = mean_sq[a] + mean_sq[b] - 2 * cross.data[upper]
        # Alike needs gap <= (SEPARATION + 2) * pooled <= that times the largest spread: drop
        # the far pairs (almost all of them among unrelated assemblies) before the rest.
        near = gap <= (SEPARATION + 2.0) * float(spread.max(initial=0.0))
        a, b, gap = a[near], b[near], gap[near]
        ka, kb = known[a], known[b]
        pooled = np.where(
            ka + kb > 0, (ka * spread[a] + kb * spread[b]) / np.maximum(ka + kb, 1e-300), 0.0
        )
        noise = pooled * (1.0 / n_eff[a] + 1.0 / n_eff[b])
        alike = gap - noise <= np.maximum(SEPARATION * pooled, MIN_GAP)
        if not alike.any():
            return out
        a, b, g = a[alike], b[alike], gap[alike]
        taken = np.zeros(k, dtype=bool)
        for i in np.argsort(g, kind="stable"):
            if taken[a[i]] or taken[b[i]]:
                continue
            taken[a[i]] = taken[b[i]] = True
            out[out == b[i]] = a[i]
            total = known[a[i]] + known[b[i]]
            if total > 0:
                spread[a[i]] = (known[a[i]] * spread[a[i]] + known[b[i]] * spread[b[i]]) / total
            known[a[i]] = total
        live, inverse = np.unique(out, return_inverse=True)
        out = inverse.astype(np.int64)
        spread, known = spread[live], known[live]
