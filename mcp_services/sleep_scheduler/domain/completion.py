"""Pattern completion: a concept cue into the memory it belongs to (the vault's Recall).

Two memories answer together, as in complementary-learning accounts of episodic and semantic
memory:

1. **Prototype retrieval** (a dense associative memory over the version's consolidated
   prototypes, Ramsauer et al. 2020): the cue's similarity to every prototype is the phi
   coefficient (the chance-corrected, activity-aware overlap of :mod:`.prototypes`), the
   prototypes are mixed with weights ``softmax(beta * phi)`` and the mix is binarised at 1/2.
   With ``beta`` large this is the nearest prototype when one clearly wins. Only cues within
   ``min_overlap`` phi of some prototype are retrieved: a cue that resembles no stored class is
   not pulled into one. Where the winner's weight is under ``DEFAULT_ABSTAIN`` (two or more
   stored classes tie for the cue), completion abstains and answers with the cue as given: a
   coin toss between classes would make an ambiguous cue worse half of the time.
2. **Settling** on the graph: the retrieved state (else the cue) settles at T = 0
   (deterministic, block-asynchronous sweeps that only lower the energy) until no concept
   changes. A prototype the cycle stored as an attractor stays where it is; concepts the
   prototypes do not cover are filled in by the graph. Where settling takes a retrieved
   prototype farther from every stored prototype (the cycle has not made it an attractor yet),
   the retrieved prototype is the answer.

Why both: the graph alone has narrow basins for correlated classes (siblings share most of their
concepts, so a noisy cue is a few flips from a spurious mixture), while nearest-prototype
retrieval has the widest basin a stored class can have. Settling keeps the answer an attractor
of the energy model the rest of the fleet (pruner, energy figures) works on.

Every completion reports how far it got: the phi of the cue and of the completed state with
their nearest stored prototypes, the retrieval's confidence (the winning softmax weight), and
``moved_away`` when the completed state is farther from every stored prototype than the cue was:
a caller must not expand the cue with such an answer. Concepts the graph has never seen cannot
take part and are reported as ``unknown``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.domain.activations import ConceptActivation, states_matrix
from mcp_services.sleep_scheduler.domain.anneal import AnnealSchedule, settle
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph
from mcp_services.sleep_scheduler.domain.prototypes import phi_pairs

DEFAULT_BETA = 24.0
"""Inverse temperature of retrieval on the phi scale: a 0.1 lead weighs 11x the runner-up."""

DEFAULT_ABSTAIN = 0.8
"""Retrieval confidence under which completion abstains and answers with the cue: the winner
must be favoured 4:1 over all other stored prototypes together (one runner-up within about
0.058 phi, or several siblings a little farther, is not). On real digits (MNIST, 20-50 samples
per class, bench_correlated) classes are multi-modal and a cue between two learned styles is as
often answered with the wrong digit's style as the right one. Measured over three draws (mean
of 20 and 50 per class): at 0.6 and beta 32 completion lowered held-out accuracy by 0.11-0.28
with cue accuracy 0.65-0.82; at 0.8 and beta 24 by 0.04-0.17 with cue accuracy 0.78-0.94.
Planted classes lose at most 0.002 of mean cue overlap (their winners weigh above 0.99)."""

DEFAULT_MIN_OVERLAP = 0.3
"""Phi a cue needs with some prototype to be retrieved: the merge threshold of a cluster."""


@dataclass(frozen=True)
class Completion:
    """A completed cue.

    Attributes:
        concept_ids: the active concepts of the attractor, in index order.
        added: concepts the completion switched on that the cue did not have.
        removed: cue concepts the completion switched off.
        unknown: cue concepts not in the graph's index (ignored).
        energy: energy of the attractor; ``cue_energy`` that of the cue's state.
        sweeps: T = 0 sweeps until no concept changed; ``settled`` False if the cap was hit.
        cue_overlap: phi of the cue with its nearest stored prototype (0.0 without prototypes).
        overlap: phi of the completed state with its nearest stored prototype (0.0 likewise).
        confidence: softmax weight of the prototype retrieval picked (0.0: none retrieved).
        moved_away: True when ``overlap < cue_overlap``: the completion is worse than the cue.
    """

    concept_ids: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    unknown: tuple[str, ...]
    energy: float
    cue_energy: float
    sweeps: int
    settled: bool
    cue_overlap: float = 0.0
    overlap: float = 0.0
    confidence: float = 0.0
    moved_away: bool = False


def nearest_overlap(
    states: sp.csr_matrix, prototypes: sp.csr_matrix
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Phi of each state row with its nearest prototype row, and that row (for rows sharing no
    concept with any prototype, the least negative phi of a disjoint one)."""
    b, n = states.shape
    best = np.zeros(b)
    which = np.full(b, -1, dtype=np.int64)
    if prototypes.shape[0] == 0 or b == 0:
        return best, which
    r, c, phi = phi_pairs(states, prototypes, n)
    # A prototype sharing no concept with a row has phi = -sqrt(na nb / ((n - na)(n - nb))),
    # highest for the smallest prototype: the floor of every row that misses some prototype.
    na = np.asarray(states.sum(axis=1)).ravel()
    nb = np.asarray(prototypes.sum(axis=1)).ravel()
    k = int(nb.argmin())
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = -np.sqrt(na * nb[k] / ((n - na) * (n - nb[k])))
    floor = np.where(np.isfinite(floor), floor, 0.0)
    misses = np.bincount(r, minlength=b) < prototypes.shape[0]
    best = np.where(misses, floor, -np.inf)
    which = np.where(misses, k, -1).astype(np.int64)
    order = np.lexsort((-phi, r))
    r, c, phi = r[order], c[order], phi[order]
    first = np.ones(len(r), dtype=bool)
    first[1:] = r[1:] != r[:-1]
    rows = r[first]
    better = phi[first] > best[rows]
    best[rows[better]] = phi[first][better]
    which[rows[better]] = c[first][better]
    return best, which


def retrieve(
    cues: sp.csr_matrix,
    prototypes: sp.csr_matrix,
    beta: float = DEFAULT_BETA,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> tuple[sp.csr_matrix, NDArray[np.float64]]:
    """One dense-associative-memory step from each cue row: the binarised softmax mix of the
    prototypes (module doc), or the cue itself where no prototype is within ``min_overlap``.

    Returns the states (B, N) and each row's confidence (0.0 where the cue was kept).
    """
    b, n = cues.shape
    confidence = np.zeros(b)
    if prototypes.shape[0] == 0 or b == 0:
        return cues, confidence
    r, c, phi = phi_pairs(cues, prototypes, n)
    top = np.full(b, -np.inf)
    np.maximum.at(top, r, phi)
    near = top >= min_overlap
    keep = near[r] & (phi > top[r] - 20.0 / beta)  # weights under e^-20 cannot move a vote
    r, c, phi = r[keep], c[keep], phi[keep]
    w = np.exp(beta * (phi - top[r]))
    total = np.bincount(r, weights=w, minlength=b)
    w = w / total[r]
    np.maximum.at(confidence, r, w)
    mix = sp.csr_matrix((w, (r, c)), shape=(b, prototypes.shape[0])) @ prototypes
    mix = sp.csr_matrix(mix)
    mix.data = (mix.data > 0.5).astype(np.float64)
    mix.eliminate_zeros()
    # Rows near a prototype take the mix, the others keep their cue.
    out = sp.diags(near.astype(np.float64)) @ mix + sp.diags((~near).astype(np.float64)) @ cues
    out = sp.csr_matrix(out)
    out.eliminate_zeros()
    out.sort_indices()
    return out, confidence


def complete(
    graph: ConceptGraph,
    cue: ConceptActivation,
    max_sweeps: int = 100,
    seed: int = 0,
    prototypes: sp.csr_matrix | None = None,
) -> Completion:
    """Complete ``cue`` through ``graph`` and its ``prototypes`` (module doc).

    Args:
        graph: the consolidated graph.
        cue: the concepts to start from (strength > 0.5 counts as on).
        max_sweeps: sweep cap (>= 1).
        seed: fixes the visiting order, so the answer is reproducible.
        prototypes: (P, N) CSR {0, 1} prototypes over the graph's index (None or P = 0: the
            graph alone, and no overlap figures).

    Raises:
        ValueError: if ``max_sweeps`` < 1 or the prototypes do not span the graph's index.
    """
    return complete_many(graph, [cue], max_sweeps, seed, prototypes)[0]


def complete_states(
    graph: ConceptGraph,
    start: sp.csr_matrix,
    max_sweeps: int = 100,
    seed: int = 0,
    prototypes: sp.csr_matrix | None = None,
) -> tuple[sp.csr_matrix, NDArray[np.float64], int, bool]:
    """Completion of state rows (B, N): the completed states, each row's retrieval confidence,
    the sweeps run and whether every row settled. For callers that hold states (benchmarks)."""
    if max_sweeps < 1:
        raise ValueError(f"max_sweeps={max_sweeps} must be >= 1")
    protos = sp.csr_matrix((0, graph.size)) if prototypes is None else sp.csr_matrix(prototypes)
    if protos.shape[1] != graph.size:
        raise ValueError(
            f"prototypes have {protos.shape[1]} columns: expected {graph.size} (the index size)"
        )
    start = sp.csr_matrix(start)
    begin, confidence = retrieve(start, protos)
    res = settle(graph, begin, AnnealSchedule.zero(max_sweeps), np.random.default_rng(seed))
    # Where the graph settled a retrieved prototype farther from the stored prototypes than it
    # started (the cycle did not make it an attractor), the retrieved state is the answer.
    retrieved = confidence >= DEFAULT_ABSTAIN
    if retrieved.any():
        lost = retrieved & (
            nearest_overlap(res.states, protos)[0] < nearest_overlap(begin, protos)[0]
        )
        settled = _pick_rows(lost, begin, res.states)
    else:
        settled = res.states
    # Abstain where retrieval could not tell two or more stored classes apart: the cue is
    # answered as given rather than pushed into one of them at a coin's odds.
    torn = (confidence > 0.0) & ~retrieved
    states = _pick_rows(torn, start, settled)
    return states, confidence, res.sweeps, res.settled


def _pick_rows(
    mask: NDArray[np.bool_], when: sp.csr_matrix, otherwise: sp.csr_matrix
) -> sp.csr_matrix:
    """Rows of ``when`` where ``mask``, of ``otherwise`` elsewhere."""
    m = mask.astype(np.float64)
    out = sp.csr_matrix(sp.diags(m) @ when + sp.diags(1.0 - m) @ otherwise)
    out.eliminate_zeros()
    out.sort_indices()
    return out


def complete_many(
    graph: ConceptGraph,
    cues: Sequence[ConceptActivation],
    max_sweeps: int = 100,
    seed: int = 0,
    prototypes: sp.csr_matrix | None = None,
) -> list[Completion]:
    """:func:`complete` for a batch of cues, settled together."""
    start = states_matrix(cues, graph.index)
    states, confidence, sweeps, settled = complete_states(
        graph, start, max_sweeps, seed, prototypes
    )
    protos = sp.csr_matrix((0, graph.size)) if prototypes is None else sp.csr_matrix(prototypes)
    cue_overlap, _ = nearest_overlap(start, protos)
    overlap, _ = nearest_overlap(states, protos)
    e_cue = graph.energy(start)
    e_end = graph.energy(states)
    ids = graph.index.ids
    out: list[Completion] = []
    for i, cue in enumerate(cues):
        before = set(start.indices[start.indptr[i] : start.indptr[i + 1]].tolist())
        after = sorted(states.indices[states.indptr[i] : states.indptr[i + 1]])
        after_set = set(after)
        out.append(
            Completion(
                concept_ids=tuple(ids[j] for j in after),
                added=tuple(ids[j] for j in after if j not in before),
                removed=tuple(ids[j] for j in sorted(before - after_set)),
                unknown=tuple(c for c in cue.active_ids() if c not in graph.index),
                energy=float(e_end[i]),
                cue_energy=float(e_cue[i]),
                sweeps=sweeps,
                settled=settled,
                cue_overlap=float(cue_overlap[i]),
                overlap=float(overlap[i]),
                confidence=float(confidence[i]),
                moved_away=bool(overlap[i] < cue_overlap[i] - 1e-12),
            )
        )
    return out
