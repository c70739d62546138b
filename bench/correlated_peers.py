"""Peers and measures of bench/bench_correlated.py (dense, for N of a few thousand at most).

Every peer is a *completer*: a function from cue states (B, N) {0, 1} to completed states. The
graph peers build a {0, 1} energy model and settle the cues at T = 0 with the scheduler's own
:func:`settle`; the prototype peers return the binarised centre they pick.

* ``hebbian``: the covariance rule on the raw episodes (domain/baselines.py), threshold from a
  grid, picked by its own cue accuracy (an oracle that favours it);
* ``dreaming_kernel``: ``J(t) = (1 + t) H (I + t H)^-1`` (Fachechi, Agliari, Barra 2019) with
  ``H`` the episodes' covariance in the activity-aware (Tsodyks-Feigel'man) coding
  ``z = (x - mu) / sqrt(mu (1 - mu))``, computed in episode space; ``t`` and the threshold from
  grids, picked by cue accuracy (oracle);
* ``modern_hopfield``: one softmax retrieval step over *our* prototypes (Ramsauer et al. 2020),
  ``xi <- X softmax(beta X^T z)`` on centred codes, binarised at 1/2;
* ``kmeans_k``: scipy's ``kmeans2`` (k-means++) on the episodes, nearest-centroid completion with
  the centroid binarised at 1/2 (an unsupervised reference);
* ``projector_labels``: the projector (pseudo-inverse) rule on the *label-given* class
  prototypes (Personnaz et al. 1986), centred, settled at T = 0 (an upper bound);
* ``label_vote``: the majority vote of each class's episodes *given the labels*, nearest vote by
  phi: the best an answer built from these episodes can do with perfect clustering (evidence
  where a bar is out of reach of any prototype formed from the episodes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.cluster.vq import kmeans2
from scipy.special import gammaln

from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex
from mcp_services.sleep_scheduler.domain.anneal import AnnealSchedule, settle
from mcp_services.sleep_scheduler.domain.baselines import hebbian_graph
from mcp_services.sleep_scheduler.domain.correlated import PlantedClasses
from mcp_services.sleep_scheduler.domain.prototypes import majority_vote, phi_overlap
from mcp_services.sleep_scheduler.domain.wake_sleep import swap_noise

Completer = Callable[[sp.csr_matrix], sp.csr_matrix]
F = NDArray[np.float64]


def phi_matrix(a: sp.csr_matrix, b: sp.csr_matrix, n: int) -> F:
    """(A, B) phi coefficient of {0, 1} rows."""
    n11 = np.asarray((a @ b.T).toarray(), dtype=np.float64)
    na = np.asarray(a.sum(axis=1)).ravel()[:, None]
    nb = np.asarray(b.sum(axis=1)).ravel()[None, :]
    denom = np.sqrt(na * (n - na) * nb * (n - nb))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (n * n11 - na * nb) / denom, 0.0)


@dataclass(frozen=True)
class Cues:
    """Prototype cues (each class prototype with ``noise`` of its members swapped)."""

    states: sp.csr_matrix
    labels: NDArray[np.int64]


def prototype_cues(data: PlantedClasses, per_class: int, noise: float, seed: int) -> Cues:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(data.classes, dtype=np.int64), per_class)
    n = data.prototypes.shape[1]
    states = swap_noise(data.prototypes[labels], noise, np.arange(n, dtype=np.int64), rng)
    return Cues(sp.csr_matrix(states), labels)


def bayes_cue_accuracy(data: PlantedClasses, cues: Cues, noise: float) -> float:
    """The best class accuracy any method can reach on the prototype cues: the Bayes classifier
    with the true prototypes and the cues' exact noise model (:func:`prototype_cues`: exactly
    ``round(noise k)`` of a class's ``k`` members swapped for outside concepts, uniformly).

    A cue is consistent with class c when it has ``k_c`` members of which ``k_c - s_c`` are c's;
    its likelihood is then ``1 / (C(k_c, s_c) C(N - k_c, s_c))`` (uniform prior over classes).
    Ties count as a fair draw. No completion can beat this on average; when it is below a bar,
    the bar cannot be met on that cue set.
    """
    protos = sp.csr_matrix(data.prototypes)
    n = protos.shape[1]
    k = np.diff(protos.indptr).astype(np.int64)
    s = np.minimum(np.rint(noise * k).astype(np.int64), k)
    shared = np.asarray((sp.csr_matrix(cues.states) @ protos.T).todense())
    size = np.diff(sp.csr_matrix(cues.states).indptr)
    log_like = -(gammaln(k + 1) - gammaln(s + 1) - gammaln(k - s + 1))
    log_like -= gammaln(n - k + 1) - gammaln(s + 1) - gammaln(n - k - s + 1)
    total = 0.0
    for r in range(shared.shape[0]):
        ok = (size[r] == k) & (shared[r] == k - s)
        if not ok.any():
            continue
        ll = np.where(ok, log_like, -np.inf)
        best = np.flatnonzero(ll >= ll.max() - 1e-12)
        total += float(cues.labels[r] in best) / len(best)
    return float(total / shared.shape[0])


def measure(complete: Completer, data: PlantedClasses, cues: Cues) -> dict[str, float]:
    """Class accuracy and mean phi with the class prototype, after and before completion."""
    n = data.prototypes.shape[1]
    out: dict[str, float] = {}
    for name, states, labels in (
        ("cue", cues.states, cues.labels),
        ("held_out", data.held_out, data.held_out_labels),
    ):
        done = sp.csr_matrix(complete(states))
        own = data.prototypes[labels]
        before = phi_matrix(states, data.prototypes, n)
        after = phi_matrix(done, data.prototypes, n)
        out[f"{name}_accuracy_before"] = float(np.mean(before.argmax(axis=1) == labels))
        out[f"{name}_accuracy"] = float(np.mean(after.argmax(axis=1) == labels))
        out[f"{name}_overlap_before"] = float(np.mean(phi_overlap(states, own, n)))
        out[f"{name}_overlap"] = float(np.mean(phi_overlap(done, own, n)))
    return {k: round(v, 4) for k, v in out.items()}


def prototype_figures(protos: sp.csr_matrix, data: PlantedClasses) -> dict[str, Any]:
    """How many prototypes were formed and how many classes own one (nearest by phi)."""
    n = data.prototypes.shape[1]
    if protos.shape[0] == 0:
        return {"prototypes": 0, "classes_owning": 0}
    owner = phi_matrix(sp.csr_matrix(protos), data.prototypes, n).argmax(axis=1)
    return {
        "prototypes": int(protos.shape[0]),
        "classes_owning": len(np.unique(owner)),
        "classes": data.classes,
    }


def settle_completer(graph: ConceptGraph) -> Completer:
    def run(states: sp.csr_matrix) -> sp.csr_matrix:
        res = settle(graph, states, AnnealSchedule.zero(200), np.random.default_rng(0))
        return res.states

    return run


def _graph_of(j: F, mu: F, theta: float) -> ConceptGraph:
    """{0, 1} model with field ``J (s - mu) - theta * spread``, J zero-diagonal symmetric."""
    j = 0.5 * (j + j.T)
    np.fill_diagonal(j, 0.0)
    b = -j @ mu
    spread = float(np.sqrt(np.mean(j**2)) * np.sqrt(j.shape[0])) or 1.0
    n = j.shape[0]
    return ConceptGraph(ConceptIndex.of_size(n), sp.csr_matrix(j), b - theta * spread)


def _pick(
    graphs: dict[str, ConceptGraph], data: PlantedClasses, cues: Cues
) -> tuple[str, Completer]:
    best, best_key = -1.0, ""
    for key, g in graphs.items():
        fig = measure(settle_completer(g), data, cues)
        score = fig["cue_accuracy"] + fig["cue_overlap"]
        if score > best:
            best, best_key = score, key
    return best_key, settle_completer(graphs[best_key])


def hebbian(episodes: sp.csr_matrix, data: PlantedClasses, cues: Cues) -> tuple[str, Completer]:
    n = episodes.shape[1]
    idx = ConceptIndex.of_size(n)
    graphs = {f"theta={th}": hebbian_graph(idx, episodes, th) for th in (0.0, 0.25, 0.5, 1.0)}
    return _pick(graphs, data, cues)


def dreaming_kernel(
    episodes: sp.csr_matrix, data: PlantedClasses, cues: Cues
) -> tuple[str, Completer]:
    x = np.asarray(episodes.toarray(), dtype=np.float64)
    e, n = x.shape
    mu = np.clip(x.mean(axis=0), 1e-3, 1 - 1e-3)
    z = (x - mu) / np.sqrt(mu * (1 - mu))
    c = z @ z.T / n  # (E, E): H = z^T z / n shares its non-zero spectrum
    graphs: dict[str, ConceptGraph] = {}
    for t in (0.0, 1.0, 10.0, 100.0, 1000.0):
        m = (1.0 + t) * np.linalg.inv(np.eye(e) + t * c)
        j = z.T @ m @ z / n
        # Back to the {0, 1} units: J_ij / sqrt(v_i v_j) on (s - mu).
        d = 1.0 / np.sqrt(mu * (1 - mu))
        jj = j * np.outer(d, d)
        for th in (0.0, 0.1, 0.2):
            graphs[f"t={t},theta={th}"] = _graph_of(jj, mu, th)
    return _pick(graphs, data, cues)


def projector_labels(data: PlantedClasses, cues: Cues) -> tuple[str, Completer]:
    x = np.asarray(data.prototypes.toarray(), dtype=np.float64)
    mu = np.clip(x.mean(axis=0), 1e-3, 1 - 1e-3)
    z = x - mu
    j = z.T @ np.linalg.pinv(z @ z.T) @ z
    graphs = {f"theta={th}": _graph_of(j, mu, th) for th in (0.0, 0.05, 0.1)}
    return _pick(graphs, data, cues)


def centroid_completer(centres: F) -> Completer:
    """Nearest centre (Euclidean), returned binarised at 1/2."""
    binary = sp.csr_matrix((centres > 0.5).astype(np.float64))

    def run(states: sp.csr_matrix) -> sp.csr_matrix:
        s = np.asarray(states.toarray(), dtype=np.float64)
        d = (s**2).sum(1)[:, None] - 2 * s @ centres.T + (centres**2).sum(1)[None, :]
        return sp.csr_matrix(binary[d.argmin(axis=1)])

    return run


def kmeans(episodes: sp.csr_matrix, k: int, seed: int) -> tuple[F, Completer]:
    x = np.asarray(episodes.toarray(), dtype=np.float64)
    centres, _ = kmeans2(x, k, minit="++", seed=seed)
    return centres, centroid_completer(centres)


def separation(data: PlantedClasses) -> dict[str, float]:
    """How far apart the classes are against how far a sample strays from its class (Hamming
    distances in concepts): the closest pair of class prototypes and the mean sample."""
    x = np.asarray(data.prototypes.toarray(), dtype=np.float64)
    d = (x[:, None, :] != x[None, :, :]).sum(axis=2).astype(np.float64)
    np.fill_diagonal(d, np.inf)
    own = np.asarray(data.samples.toarray(), dtype=np.float64) != x[data.labels]
    return {
        "closest_classes_concepts": float(d.min()),
        "sample_to_class_concepts": round(float(own.sum(axis=1).mean()), 2),
    }


def label_vote(data: PlantedClasses) -> tuple[sp.csr_matrix, Completer]:
    """The label-given majority vote of each class's episodes and nearest-vote completion (by
    phi): what an answer built from these episodes reaches when the clustering is perfect (a
    supervised reference, the ceiling of prototype formation on this episode set)."""
    n = data.prototypes.shape[1]
    votes, _ = majority_vote(
        sp.csr_matrix(data.samples, dtype=np.float64),
        data.labels,
        np.ones(data.samples.shape[0]),
        data.classes,
    )

    def run(states: sp.csr_matrix) -> sp.csr_matrix:
        return sp.csr_matrix(votes[phi_matrix(states, votes, n).argmax(axis=1)])

    return votes, run


def modern_hopfield(protos: sp.csr_matrix, beta: float = 16.0) -> Completer:
    """One retrieval step of a dense associative memory over ``protos``; see module doc."""
    x = np.asarray(protos.toarray(), dtype=np.float64)
    mu = x.mean(axis=0) if x.shape[0] > 1 else np.full(x.shape[1], x.mean())
    z = x - mu
    norm = np.linalg.norm(z, axis=1)
    z = z / np.where(norm > 0, norm, 1.0)[:, None]

    def run(states: sp.csr_matrix) -> sp.csr_matrix:
        s = np.asarray(states.toarray(), dtype=np.float64) - mu
        s = s / np.maximum(np.linalg.norm(s, axis=1), 1e-12)[:, None]
        logits = beta * s @ z.T
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return sp.csr_matrix((p @ x > 0.5).astype(np.float64))

    return run
