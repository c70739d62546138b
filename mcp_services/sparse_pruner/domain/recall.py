"""Recall of stored patterns: settle a corrupted cue at T = 0 and compare with the pattern.

The dynamics are asynchronous sign updates ``s_i <- sign(sum_j W_ij s_j + b_i)`` in a random order
each sweep (a zero field keeps the current state). For symmetric ``W`` with zero diagonal each
update can only lower ``E(s) = -1/2 s^T W s - b^T s``, so settling terminates at a fixed point;
``max_sweeps`` only guards against a non-symmetric input.

A field within :data:`TIE_TOLERANCE` of the row's scale (``sum_j |W_ij| + |b_i|``) counts as zero.
Concepts of sparse graphs often have an exact tie (no edge to an active concept, zero bias), and
the same graph held as ``(J, h)`` in memory or read back from its {0, 1} form computes that zero
with a different rounding (``1e-17``); without the tolerance the sign of the rounding would decide
the concept's state, and one graph would be measured at two recalls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from .graph import ConceptGraph, FloatArray, check_prototypes

BoolArray = NDArray[np.bool_]

# Relative size below which a local field is a tie (see the module docstring): far above the
# rounding of a sum of a few thousand doubles (1e-13), far below any learned weight or bias.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class QualityReport:
    """How well a graph keeps its stored patterns.

    Attributes:
        recall: fraction of cues (each prototype with ``cue_noise`` of its entries flipped, several
            cues per prototype) that settle to overlap ``>= overlap_threshold``; in ``[0, 1]``.
        mean_overlap: mean final overlap ``(1/N) s . xi`` over cues, in ``[-1, 1]``.
        fixed_points: ``(P,)`` whether each prototype is a strict fixed point
            (``xi_i * h_i > 0`` for every concept ``i``).
        cues: number of cues settled.
        recalled: ``(cues,)`` whether each cue settled onto its prototype; ``recall`` is its
            mean. Two reports on the same cues compare cue by cue (:func:`paired_drop`).
    """

    recall: float
    mean_overlap: float
    fixed_points: BoolArray
    cues: int
    recalled: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def fixed_fraction(self) -> float:
        """Fraction of prototypes that are fixed points."""
        return float(np.mean(self.fixed_points)) if self.fixed_points.size else 1.0

    @property
    def stderr(self) -> float:
        """Standard error of ``recall`` as an estimate over random cues: ``sqrt(r (1 - r) / C)``.

        Another cue set of the same size would typically measure within about this much.
        """
        if not self.cues:
            return 0.0
        return math.sqrt(self.recall * (1.0 - self.recall) / self.cues)


def paired_drop(before: QualityReport, after: QualityReport) -> tuple[float, float]:
    """``(drop, stderr)``: the recall lost from ``before`` to ``after`` and its standard error.

    Both reports must come from the same cues (the same prototypes, noise, count and seed). The
    drop is the mean over cues of ``recalled_before - recalled_after`` (in ``{-1, 0, 1}``); its
    standard error is that of a paired mean, ``s_d / sqrt(C)``, so it is zero when no cue changed
    its outcome and about ``sqrt(k) / C`` when ``k`` cues were lost and none gained.

    Raises:
        ValueError: the reports were not measured on the same number of cues.
    """
    if before.recalled.shape != after.recalled.shape or before.cues != after.cues:
        raise ValueError(
            f"after: measured on {after.cues} cues, before on {before.cues}; compare reports of "
            "the same cue set"
        )
    d = before.recalled.astype(np.float64) - after.recalled.astype(np.float64)
    n = d.size
    if n == 0:
        return 0.0, 0.0
    drop = float(d.mean())
    var = float(np.sum((d - drop) ** 2)) / max(n - 1, 1)
    return drop, math.sqrt(var / n)


def settle(
    graph: ConceptGraph, states: FloatArray, *, seed: int = 0, max_sweeps: int = 100
) -> FloatArray:
    """Return the T = 0 fixed points reached from each row of ``states`` (``(C, N)``, +-1).

    Rows settle in parallel; each sweep visits the concepts in a fresh random order (``seed``).
    """
    s = np.array(states, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != graph.n_concepts:
        raise ValueError(f"states: expected shape (C, {graph.n_concepts}), got {s.shape}")
    cols = sp.csc_matrix(graph.weights)
    indptr, indices, data = cols.indptr, cols.indices, cols.data
    ties = _tie_levels(graph)
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        changed = False
        for i in rng.permutation(graph.n_concepts):
            lo, hi = indptr[i], indptr[i + 1]
            h = s[:, indices[lo:hi]] @ data[lo:hi] + graph.biases[i]
            new = np.where(h > ties[i], 1.0, np.where(h < -ties[i], -1.0, s[:, i]))
            if not changed and np.any(new != s[:, i]):
                changed = True
            s[:, i] = new
        if not changed:
            break
    return s


def fixed_points(graph: ConceptGraph, prototypes: FloatArray) -> BoolArray:
    """``(P,)`` whether each prototype satisfies ``xi_i * h_i > 0`` for every concept (a field
    within the tie tolerance is not positive)."""
    fields = np.asarray(graph.weights @ prototypes.T).T + graph.biases
    return np.asarray(np.all(fields * prototypes > _tie_levels(graph), axis=1))


def _tie_levels(graph: ConceptGraph) -> FloatArray:
    """``(N,)`` the largest ``|field|`` of each concept that still counts as zero."""
    scale = np.asarray(abs(graph.weights).sum(axis=1)).ravel() + np.abs(graph.biases)
    return np.asarray(TIE_TOLERANCE * scale, dtype=np.float64)


def corrupt(prototypes: FloatArray, noise: float, copies: int, seed: int) -> FloatArray:
    """``(P * copies, N)`` cues: each prototype repeated ``copies`` times with exactly
    ``round(noise * N)`` entries flipped."""
    rng = np.random.default_rng(seed)
    cues = np.repeat(prototypes, copies, axis=0)
    n_flip = round(noise * cues.shape[1])
    flips = np.argsort(rng.random(cues.shape), axis=1)[:, :n_flip]
    np.put_along_axis(cues, flips, -np.take_along_axis(cues, flips, axis=1), axis=1)
    return cues


def assess_quality(
    graph: ConceptGraph,
    prototypes: NDArray[np.floating],
    *,
    cue_noise: float = 0.1,
    overlap_threshold: float = 0.95,
    cues_per_pattern: int = 5,
    seed: int = 0,
) -> QualityReport:
    """Measure recall of ``prototypes`` (``(P, N)``, +-1) from cues with ``cue_noise`` flipped.

    The same ``seed`` gives the same cues and update order, so two graphs assessed with one seed
    are compared on identical trials.

    Raises:
        ValueError: bad prototypes, ``cue_noise`` outside ``[0, 0.5)``, ``overlap_threshold``
            outside ``(0, 1]`` or ``cues_per_pattern < 1``.
    """
    xi = check_prototypes(prototypes, graph.n_concepts)
    if not 0.0 <= cue_noise < 0.5:
        raise ValueError(f"cue_noise: must be in [0, 0.5), got {cue_noise}")
    if not 0.0 < overlap_threshold <= 1.0:
        raise ValueError(f"overlap_threshold: must be in (0, 1], got {overlap_threshold}")
    if cues_per_pattern < 1:
        raise ValueError(f"cues_per_pattern: must be >= 1, got {cues_per_pattern}")
    cues = corrupt(xi, cue_noise, cues_per_pattern, seed)
    final = settle(graph, cues, seed=seed)
    overlap = np.mean(final * np.repeat(xi, cues_per_pattern, axis=0), axis=1)
    recalled = np.asarray(overlap >= overlap_threshold)
    return QualityReport(
        recall=float(np.mean(recalled)),
        mean_overlap=float(np.mean(overlap)),
        fixed_points=fixed_points(graph, xi),
        cues=int(cues.shape[0]),
        recalled=recalled,
    )
