"""Merging noisy, unlabelled episodes of the same assembly into prototypes (episodic -> semantic).

Episodes carry no label saying which assembly they came from, so this is clustering followed by
denoising. The similarity is the phi coefficient (Pearson correlation of two binary vectors over
all N concepts)::

    phi = (N n11 - n1 n2) / sqrt(n1 (N - n1) n2 (N - n2))

It is chance-corrected, so it suits dense and sparse sets alike: two copies of a dense ±1 pattern
with 10% of the concepts flipped each have phi ~ 0.64 and unrelated patterns 0 ± 1/sqrt(N); two
copies of a 3%-active assembly with 10% of its members swapped have phi ~ 0.8 while unrelated
assemblies are near 0 (a raw overlap or cosine would put dense unrelated patterns at 0.5).

Clustering: a leader pass (an episode joins the most similar existing cluster with phi >= threshold,
else it founds one); then correlated classes the leader pass lumped together are split apart and
clusters that are one class are merged (:mod:`.split`); then refinement passes reassign every
episode to the most similar majority-vote prototype; light clusters are then checked leave-one-out
(a member whose cluster's vote without it is less like it than another prototype moves there: a few
noisy copies of a class cannot vote themselves a prototype); last, clusters that fewer than
``min_support`` episodes confirm form no prototype (their episodes join the nearest one within the
threshold, or none). A prototype is the weighted majority vote of its members (a concept is active
when more than half the members' weight has it active): five copies at 10% noise leave about 1% of
the concepts wrong. Similarities are computed from sparse overlap counts only (pairs sharing no
active concept have phi <= 0 and never merge), so the cost grows with the number of
episode-prototype pairs that share concepts, not with their product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.domain.kernels import leave_one_out_phi
from mcp_services.sleep_scheduler.domain.split import (
    DEFAULT_MIN_WEIGHT,
    merge_alike,
    split_clusters,
)

DEFAULT_MERGE_THRESHOLD = 0.3
"""Halfway between dense copies (~0.64) and unrelated patterns (~0 ± 0.05 at N = 400)."""

DEFAULT_MIN_SUPPORT = 3.0
"""Episode weight a prototype needs. Two sparse random episodes share a concept by chance often
(50 put-get-loop episodes of ~4 concepts out of 500 give a dozen such pairs), and the vote of
such a pair is that one concept: a "memory" that only fights the real ones. Three sightings
agreeing on two or more concepts are rare by chance."""

MIN_CONCEPTS = 2
"""Active concepts a prototype needs: one concept alone couples to nothing."""

_CHUNK = 1024


@dataclass(frozen=True)
class PrototypeSet:
    """Prototypes found in a batch of episodes.

    Attributes:
        states: (K, N) CSR {0, 1} majority-vote prototypes.
        weights: (K,) total member weight of each prototype (episode count when unweighted).
        assignment: (E,) prototype row of each input episode (-1: it joined no prototype).
    """

    states: sp.csr_matrix
    weights: NDArray[np.float64]
    assignment: NDArray[np.int64]

    @property
    def count(self) -> int:
        """Number of prototypes K."""
        return int(self.states.shape[0])


def phi_pairs(
    a: sp.csr_matrix, b: sp.csr_matrix, n: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Phi of every row pair of ``a`` (A, N) and ``b`` (B, N) that shares an active concept.

    Returns (rows of a, rows of b, phi) over those pairs only; other pairs have phi <= 0.
    """
    n11 = sp.coo_matrix(a @ b.T)
    na = np.asarray(a.sum(axis=1)).ravel()
    nb = np.asarray(b.sum(axis=1)).ravel()
    r, c, v = n11.row.astype(np.int64), n11.col.astype(np.int64), n11.data
    denom = np.sqrt(na[r] * (n - na[r]) * nb[c] * (n - nb[c]))
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(denom > 0, (n * v - na[r] * nb[c]) / denom, 0.0)
    return r, c, phi


def phi_overlap(a: sp.csr_matrix, b: sp.csr_matrix, n: int) -> NDArray[np.float64]:
    """Row-wise phi of equally shaped state matrices ``a`` and ``b`` (B, N); returns (B,).

    Two identical non-trivial rows give 1.0; a row that is all off or all on gives 0.0.
    """
    n11 = np.asarray(a.multiply(b).sum(axis=1)).ravel()
    na = np.asarray(a.sum(axis=1)).ravel()
    nb = np.asarray(b.sum(axis=1)).ravel()
    denom = np.sqrt(na * (n - na) * nb * (n - nb))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (n * n11 - na * nb) / denom, 0.0)


def _best_match(
    episodes: sp.csr_matrix, centres: sp.csr_matrix, n: int, threshold: float
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Most similar centre per episode (-1 where none reaches ``threshold``), in chunks."""
    best = np.full(episodes.shape[0], -1, dtype=np.int64)
    score = np.full(episodes.shape[0], -np.inf)
    if centres.shape[0] == 0:
        return best, score
    for start in range(0, episodes.shape[0], _CHUNK):
        r, c, phi = phi_pairs(episodes[start : start + _CHUNK], centres, n)
        keep = phi >= threshold
        r, c, phi = r[keep], c[keep], phi[keep]
        order = np.lexsort((-phi, r))  # per row, highest phi first
        r, c, phi = r[order], c[order], phi[order]
        first = np.ones(len(r), dtype=bool)
        first[1:] = r[1:] != r[:-1]
        best[start + r[first]] = c[first]
        score[start + r[first]] = phi[first]
    return best, score


def _leader_pass(episodes: sp.csr_matrix, n: int, threshold: float) -> NDArray[np.int64]:
    labels = np.full(episodes.shape[0], -1, dtype=np.int64)
    leaders: list[int] = []
    for start in range(0, episodes.shape[0], _CHUNK):
        stop = min(start + _CHUNK, episodes.shape[0])
        chunk = episodes[start:stop]
        if leaders:
            best, _ = _best_match(chunk, episodes[leaders], n, threshold)
            labels[start:stop] = best
        # Episodes matching no earlier leader cluster among themselves, in arrival order.
        r, c, phi = phi_pairs(chunk, chunk, n)
        keep = phi >= threshold
        close = sp.csr_matrix(
            (np.ones(int(keep.sum())), (r[keep], c[keep])), shape=(stop - start, stop - start)
        )
        for i in range(stop - start):
            if labels[start + i] >= 0:
                continue
            labels[start + i] = len(leaders)
            mates = close.indices[close.indptr[i] : close.indptr[i + 1]]
            mates = mates[(mates > i) & (labels[start + mates] < 0)]
            labels[start + mates] = len(leaders)
            leaders.append(start + i)
    return labels


def majority_vote(
    episodes: sp.csr_matrix, labels: NDArray[np.int64], weights: NDArray[np.float64], k: int
) -> tuple[sp.csr_matrix, NDArray[np.float64]]:
    """Weighted majority-vote prototypes (k, N) of the clusters ``labels`` and their weights."""
    member = sp.csr_matrix(
        (weights, (labels, np.arange(len(labels)))), shape=(k, episodes.shape[0])
    )
    votes = sp.csr_matrix(member @ episodes)
    total = np.asarray(member.sum(axis=1)).ravel()
    votes.data = (votes.data > 0.5 * total[np.repeat(np.arange(k), np.diff(votes.indptr))]).astype(
        np.float64
    )
    votes.eliminate_zeros()
    return votes, total


def merge_episodes(
    episodes: sp.csr_matrix,
    threshold: float = DEFAULT_MERGE_THRESHOLD,
    weights: NDArray[np.float64] | None = None,
    refine_passes: int = 2,
    min_weight: float | None = DEFAULT_MIN_WEIGHT,
    min_support: float = DEFAULT_MIN_SUPPORT,
) -> PrototypeSet:
    """Cluster {0, 1} episode states (E, N) and return their majority-vote prototypes.

    Args:
        episodes: (E, N) CSR binary states (see :func:`.activations.states_matrix`).
        threshold: minimum phi in (0, 1) for an episode to join a cluster.
        weights: (E,) positive vote weight per row (default 1.0; e.g. a previous prototype can
            vote with the number of episodes it was made from).
        refine_passes: reassign-and-revote passes after the leader pass (>= 0).
        min_weight: episode weight a class needs for :func:`.split.split_clusters` to split it
            off a cluster of correlated classes (None: no splitting or merging of alike
            clusters, the leader pass only).
        min_support: episode weight a prototype needs to be formed at all (0: every cluster
            is one). Rows of lighter clusters join the nearest kept prototype within
            ``threshold`` or stay unassigned (assignment -1): an episode seen once, like nothing
            else, is not yet structure, and rehearsing it would only hold noise in the graph.

    Raises:
        ValueError: if ``threshold`` is outside (0, 1), ``weights`` has the wrong shape or a
            non-positive entry, or ``refine_passes`` is negative.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1), e.g. 0.3")
    if refine_passes < 0:
        raise ValueError(f"refine_passes={refine_passes} must be >= 0")
    e, n = episodes.shape
    w = np.ones(e) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (e,) or np.any(w <= 0):
        raise ValueError(f"weights must be {e} positive numbers, one per episode row")
    x = sp.csr_matrix(episodes, dtype=np.float64)
    if e == 0:
        return PrototypeSet(sp.csr_matrix((0, n)), np.zeros(0), np.zeros(0, dtype=np.int64))
    labels = _leader_pass(x, n, threshold)
    if min_weight is not None:
        labels = split_clusters(x, labels, w, min_weight)
        labels = merge_alike(x, labels, w)
    protos, total = majority_vote(x, labels, w, _count(labels))
    for _ in range(refine_passes):
        best, _ = _best_match(x, protos, n, threshold)
        new = np.where(best >= 0, best, labels)
        if np.array_equal(new, labels):
            break
        _, labels = np.unique(new, return_inverse=True)  # drop emptied clusters
        labels = labels.astype(np.int64)
        protos, total = majority_vote(x, labels, w, _count(labels))
    if min_weight is not None:
        moved = _loo_reassign(x, w, labels, protos, total, threshold, min_support)
        if not np.array_equal(moved, labels):
            _, labels = np.unique(moved, return_inverse=True)  # drop emptied clusters
            labels = labels.astype(np.int64)
            protos, total = majority_vote(x, labels, w, _count(labels))
    if min_support > 0.0:
        protos, total, labels = _drop_light(x, w, labels, protos, total, min_support, threshold)
    return PrototypeSet(protos, total, labels)


LOO_WEIGHT = 4.0 * DEFAULT_MIN_SUPPORT
"""Clusters lighter than this are cross-checked member by member (:func:`_loo_reassign`): in
a cluster of a dozen members or fewer one member's vote decides concepts of the majority, so a
handful of heavily noised copies of a class can vote themselves a "prototype" of their own."""


def _loo_reassign(
    x: sp.csr_matrix,
    w: NDArray[np.float64],
    labels: NDArray[np.int64],
    protos: sp.csr_matrix,
    total: NDArray[np.float64],
    threshold: float,
    min_support: float,
) -> NDArray[np.int64]:
    """Leave-one-out check of light clusters: a member whose cluster's vote *without its own*
    is less like it (phi) than another prototype is moved to that prototype.

    A real class survives it (the others' vote is still the class), while a few noisy copies of
    a class that out-voted their own noise lose it: each is nearer the class's own prototype
    than the vote of the rest. Only clusters of ``min_support`` to ``LOO_WEIGHT`` are checked
    (lighter ones form no prototype anyway), over the concepts their members use, and members
    only move to clusters of ``min_support`` or more, so the cost is that of those rows.
    """
    n = x.shape[1]
    out = labels.copy()
    kept = total >= min_support
    light = np.flatnonzero(kept & (total < LOO_WEIGHT))
    if int(kept.sum()) < 2 or len(light) == 0:
        return out
    rows = np.flatnonzero(np.isin(labels, light))
    rows = rows[np.argsort(labels[rows], kind="stable")]
    # Phi over all n concepts of each member with its cluster's vote without it (compiled: a
    # loop over clusters here cost 0.15-0.3 ms each, 3 s CPU for 20k light clusters).
    loo_phi = leave_one_out_phi(x, w, rows, labels[rows], n)
    targets = np.flatnonzero(kept)
    r, c, phi = phi_pairs(x[rows], sp.csr_matrix(protos[targets]), n)
    c = targets[c]
    other = (c != labels[rows[r]]) & (phi >= threshold)
    r, c, phi = r[other], c[other], phi[other]
    best = np.full(len(rows), -np.inf)
    np.maximum.at(best, r, phi)
    win = phi >= best[r]
    target = np.full(len(rows), -1, dtype=np.int64)
    target[r[win]] = c[win]
    move = (target >= 0) & (best > loo_phi)
    out[rows[move]] = target[move]
    return out


def _count(labels: NDArray[np.int64]) -> int:
    return int(labels.max()) + 1 if len(labels) else 0


def _drop_light(
    x: sp.csr_matrix,
    w: NDArray[np.float64],
    labels: NDArray[np.int64],
    protos: sp.csr_matrix,
    total: NDArray[np.float64],
    min_support: float,
    threshold: float,
) -> tuple[sp.csr_matrix, NDArray[np.float64], NDArray[np.int64]]:
    """Keep prototypes of ``MIN_CONCEPTS`` concepts or more that members of ``min_support``
    weight confirm; the rows of the others join the nearest kept one or get -1."""
    size = np.diff(protos.indptr)
    # A member confirms its prototype when it holds at least half of it, two concepts or more:
    # members chained to a leader by one shared concept each vote a "prototype" no one shows.
    owned = labels >= 0
    held = np.zeros(len(labels))
    rows = np.flatnonzero(owned)
    held[rows] = np.asarray(x[rows].multiply(protos[labels[rows]]).sum(axis=1)).ravel()
    confirms = owned & (held >= np.maximum(MIN_CONCEPTS, 0.5 * size[np.maximum(labels, 0)]))
    confirmed = np.bincount(labels[confirms], weights=w[confirms], minlength=len(total))
    keep = (confirmed >= min_support) & (size >= MIN_CONCEPTS)
    if keep.all():
        return protos, total, labels
    kept = sp.csr_matrix(protos[np.flatnonzero(keep)])
    best, _ = _best_match(x, kept, x.shape[1], threshold)
    new_of_old = np.cumsum(keep) - 1
    out = np.where(keep[labels], new_of_old[labels], best).astype(np.int64)
    if not kept.shape[0]:
        return kept, np.zeros(0), out
    votes, mass = majority_vote(x[out >= 0], out[out >= 0], w[out >= 0], kept.shape[0])
    return votes, mass, out
