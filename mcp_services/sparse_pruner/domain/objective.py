"""The pruning objective: a squared-hinge stability loss over the graph's edges, plus L1.

For stored patterns the loss asks every concept ``i`` to keep its local field on the target side
with a margin. Training samples ``k = 1..n`` are the prototypes and ``noisy_copies`` copies of each
with a fraction ``noise`` of the inputs flipped (input ``x_k``, target the clean ``y_k``), so the
margin is asked of corrupted cues too, which is what keeps basins of attraction wide.

With ``m_ik = y_ik * sum_j W_ij x_kj`` and thresholds ``t_ik = kappa_i - y_ik * b_i`` (biases stay
fixed; pruning touches only ``W``)::

    L(w) = 1/(2n) * sum_i sum_k max(0, t_ik - m_ik)^2
    P(w) = L(w) + lam * sum_e |w_e|

where ``w_e`` is the weight of undirected edge ``e = (i, j)``, which enters the fields of both
``i`` and ``j`` (the symmetric parameterisation, see solver.py for why). The margin ``kappa_i`` is
``margin`` times the mean ``|h_i|`` of the current graph on the prototypes, so the pruned graph
keeps the field scale (and energy scale) of the graph it came from.

Fenchel dual, with ``theta >= 0`` of shape ``(N, n)`` and ``|A_e^T theta| <= lam`` for every edge::

    D(theta) = sum_ik (t_ik * theta_ik - n/2 * theta_ik^2)

At the optimum ``theta = max(0, t - m) / n``; scaling that point into the feasible set gives the
duality gap ``P - D >= P - P* >= 0``, the certificate the solver stops on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from . import kernels
from .graph import ConceptGraph, FloatArray, IndexArray, check_prototypes


@dataclass(frozen=True)
class PruningProblem:
    """One instance of the pruning objective on a fixed set of candidate edges.

    Attributes:
        n_concepts: ``N``.
        edge_i, edge_j: ``(E,)`` endpoints of the candidate edges, ``edge_i < edge_j``.
        inputs_t: ``(N, n)`` input state ``x_kj`` of concept ``j`` in sample ``k`` (transposed).
        targets_t: ``(N, n)`` target sign ``y_ik`` of concept ``i`` in sample ``k`` (transposed).
        thresholds: ``(N, n)`` the ``t_ik`` above.
    """

    n_concepts: int
    edge_i: IndexArray
    edge_j: IndexArray
    inputs_t: FloatArray
    targets_t: FloatArray
    thresholds: FloatArray

    @property
    def n_edges(self) -> int:
        """Number of candidate edges ``E``."""
        return int(self.edge_i.size)

    @property
    def n_samples(self) -> int:
        """Number of training samples ``n`` per concept."""
        return int(self.inputs_t.shape[1])

    def restrict(self, keep: NDArray[np.bool_]) -> PruningProblem:
        """Return the same problem on the edges where ``keep`` is true."""
        return PruningProblem(
            n_concepts=self.n_concepts,
            edge_i=self.edge_i[keep],
            edge_j=self.edge_j[keep],
            inputs_t=self.inputs_t,
            targets_t=self.targets_t,
            thresholds=self.thresholds,
        )


@dataclass(frozen=True)
class DualityCertificate:
    """Primal and dual values at a point and what they prove.

    ``gap = primal - dual`` bounds ``primal - optimum`` from above; ``relative_gap`` divides it by
    ``primal``. ``kkt_residual`` is the largest violation of the L1 optimality conditions,
    divided by ``lambda_max`` of the problem so it is scale-free.
    """

    primal: float
    dual: float
    gap: float
    relative_gap: float
    kkt_residual: float


def noisy_samples(
    prototypes: FloatArray, noisy_copies: int, noise: float, seed: int
) -> tuple[FloatArray, FloatArray]:
    """Return ``(inputs, targets)`` of shape ``(P * (1 + noisy_copies), N)``.

    Each copy flips exactly ``round(noise * N)`` entries of a prototype, chosen by ``seed``.
    """
    if noisy_copies < 0:
        raise ValueError(f"noisy_copies: must be >= 0, got {noisy_copies}")
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise: must be in [0, 0.5), got {noise}")
    rng = np.random.default_rng(seed)
    n_pat, n = prototypes.shape
    n_flip = round(noise * n)
    inputs = [prototypes]
    for _ in range(noisy_copies):
        copy = prototypes.copy()
        flips = np.argsort(rng.random((n_pat, n)), axis=1)[:, :n_flip]
        np.put_along_axis(copy, flips, -np.take_along_axis(copy, flips, axis=1), axis=1)
        inputs.append(copy)
    return np.vstack(inputs), np.tile(prototypes, (noisy_copies + 1, 1))


def build_problem(
    graph: ConceptGraph,
    prototypes: NDArray[np.floating],
    *,
    margin: float = 1.0,
    noisy_copies: int = 2,
    noise: float = 0.1,
    seed: int = 0,
) -> PruningProblem:
    """Build the pruning objective for ``graph`` and its stored ``prototypes`` (``(P, N)``, +-1).

    ``margin`` (> 0) scales each concept's required field relative to the graph's own mean field
    magnitude on the prototypes. Raises ``ValueError`` for a bad argument.
    """
    if not margin > 0.0:
        raise ValueError(f"margin: must be > 0, got {margin}")
    xi = check_prototypes(prototypes, graph.n_concepts)
    inputs, targets = noisy_samples(xi, noisy_copies, noise, seed)
    fields = np.asarray(graph.weights @ xi.T).T + graph.biases  # (P, N) on the clean prototypes
    kappa = margin * np.mean(np.abs(fields), axis=0)
    targets_t = np.ascontiguousarray(targets.T)
    thresholds = kappa[:, None] - targets_t * graph.biases[:, None]
    edge_i, edge_j, _ = graph.edges()
    return PruningProblem(
        n_concepts=graph.n_concepts,
        edge_i=edge_i,
        edge_j=edge_j,
        inputs_t=np.ascontiguousarray(inputs.T),
        targets_t=targets_t,
        thresholds=np.ascontiguousarray(thresholds),
    )


def margins(problem: PruningProblem, w: FloatArray) -> FloatArray:
    """Margins ``m`` (``(N, n)``): ``m_ik = y_ik * sum_j W_ij x_kj`` for edge weights ``w``."""
    return kernels.margins(problem.edge_i, problem.edge_j, w, problem.inputs_t, problem.targets_t)


def edge_gradient(problem: PruningProblem, residual: FloatArray) -> FloatArray:
    """Return ``dL/dw`` of shape ``(E,)`` given ``residual = max(0, t - m)`` of shape ``(N, n)``."""
    return kernels.edge_gradient(
        problem.edge_i, problem.edge_j, problem.inputs_t, problem.targets_t, residual
    )


def lambda_max(problem: PruningProblem) -> float:
    """The smallest ``lam`` for which ``w = 0`` is optimal: ``max_e |dL/dw_e (0)|``."""
    grad = edge_gradient(problem, np.maximum(problem.thresholds, 0.0))
    return float(np.max(np.abs(grad))) if grad.size else 0.0


def loss(problem: PruningProblem, m: FloatArray) -> float:
    """The smooth part ``L`` at margins ``m``."""
    r = np.maximum(problem.thresholds - m, 0.0)
    return float(0.5 * np.sum(r * r) / problem.n_samples)


def certificate(
    problem: PruningProblem, w: FloatArray, lam: float, m: FloatArray, lam_max: float
) -> DualityCertificate:
    """Certify the point ``w`` (with margins ``m``) for regularisation ``lam >= 0``.

    For ``lam == 0`` no finite dual point is feasible in general, so the gap is reported as the
    primal value and only ``kkt_residual`` is meaningful.
    """
    n = problem.n_samples
    r = np.maximum(problem.thresholds - m, 0.0)
    primal = float(0.5 * np.sum(r * r) / n + lam * np.sum(np.abs(w)))
    grad = edge_gradient(problem, r)
    worst = float(np.max(np.abs(grad))) if grad.size else 0.0
    if lam > 0.0:
        scale = 1.0 if worst <= lam else lam / worst
        theta = r * (scale / n)
        dual = float(np.sum(problem.thresholds * theta) - 0.5 * n * np.sum(theta * theta))
    else:
        dual = 0.0 if worst > 0.0 else primal
    gap = max(primal - dual, 0.0)
    return DualityCertificate(
        primal=primal,
        dual=dual,
        gap=gap,
        relative_gap=gap / primal if primal > 0.0 else 0.0,
        kkt_residual=kkt_residual(grad, w, lam) / lam_max if lam_max > 0.0 else 0.0,
    )


def kkt_residual(grad: FloatArray, w: FloatArray, lam: float) -> float:
    """Largest violation of ``0 in grad + lam * d|w|``, in the units of ``grad``."""
    if not grad.size:
        return 0.0
    on = w != 0.0
    viol = np.where(on, np.abs(grad + lam * np.sign(w)), np.maximum(np.abs(grad) - lam, 0.0))
    return float(np.max(viol))


def soft_threshold(x: FloatArray, t: FloatArray | float) -> FloatArray:
    """The proximal map of ``t * |.|``: ``sign(x) * max(|x| - t, 0)`` elementwise (``t >= 0``)."""
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)
