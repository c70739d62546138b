"""Coordinate descent for the pruning objective, stopped on a duality-gap certificate.

Why these choices (measured, see bench/bench_pruner.py):

* **Symmetric parameterisation.** One variable per undirected edge, entering the losses of both
  endpoints. Solving rows separately and then symmetrising was tried on planted-pattern graphs
  (N = 200, P = 20): keeping an edge only when both rows keep it left 6% of edges and recall 0.12,
  because independently chosen row supports barely overlap; keeping it when either row keeps it
  and averaging broke half the stored fixed points. Solving for the symmetric weights directly
  kept 18% of edges with recall 1.0 and every prototype a fixed point, and the result is the
  certified optimum of the problem actually solved rather than a post-processed one.
* **Compiled Gauss-Seidel sweeps** (kernels.py): one edge after another in a numba loop. The
  earlier design vectorised over the colour classes of an edge colouring (matchings update
  independently) and spent two thirds of its time in per-class numpy overhead.
* **Newton coordinate steps with a majorisation safeguard.** The loss is piecewise quadratic; its
  curvature along ``w_e`` is (active samples of i and j) / n, at most ``2``. The Newton-prox step
  is taken when it does at least as well as the guaranteed decrease of the ``1/2``-step
  proximal step, else the latter is taken, so every step descends monotonically.
* **Working sets and gap-safe screening** (Ndiaye et al., JMLR 2017): sweeps run over the nonzero
  edges and the KKT violators only; an edge whose dual constraint is slack by more than the
  gap-safe radius ``2 * sqrt(gap)`` is provably zero at the optimum and is removed for good.

Against liblinear's coordinate descent (C) on the same problem at the same certified gap 1e-6
(bench/bench_pruner.py --full, figures in bench/results/pruner.json): faster at 100k edges both at
the default ``tau = 0.1`` and at ``tau = 0.01``, where liblinear needs tol 1e-8 and many passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from . import kernels
from .graph import FloatArray, IndexArray
from .newton import newton_polish
from .objective import (
    DualityCertificate,
    PruningProblem,
    certificate,
    edge_gradient,
    lambda_max,
    margins,
)

# Inner sweeps between full-gradient checks (a check is one gradient pass, under a sweep's cost).
# Total time measured flat between 5 and 20 on 20k-100k edges at tau 0.003-0.1.
_INNER_SWEEPS = 10
# Continuation path for cold starts at small lam: halve from 0.5 lambda_max, and at each point
# only get near (gap 1e-2, at most 3 working-set rounds); the last point is solved for real.
_PATH_START = 0.5
_PATH_RATIO = 2.0
_PATH_TOL = 1e-2
_PATH_ROUNDS = 3
# Iterates combined per Anderson extrapolation; 5 is the depth Bertrand & Massias found robust.
_ANDERSON_DEPTH = 5
# A working-set edge also enters when its gradient is within this fraction of lam, so that the
# next outer check does not find it violating after the others have moved.
_WORKING_SET_SLACK = 0.5


@dataclass(frozen=True)
class L1Solution:
    """The result of :func:`solve_l1`.

    Attributes:
        weights: ``(E,)`` edge weights, aligned with the problem's edges.
        lam: the absolute L1 strength solved for.
        certificate: primal, dual, gap and KKT residual at ``weights``.
        sweeps: coordinate sweeps performed (over working sets, counted in edge-visits / E).
        screened: edges proven zero by gap-safe screening.
        screened_mask: ``(E,)`` which edges those are. The rule holds for every optimum (the dual
            optimum is unique even when the primal one is not), so these are zero in any solution.
        converged: the stopping rule was met (``relative_gap <= tol``, or for ``lam == 0``
            ``kkt_residual <= tol``) within ``max_sweeps``.
    """

    weights: FloatArray
    lam: float
    certificate: DualityCertificate
    sweeps: float
    screened: int
    screened_mask: NDArray[np.bool_]
    converged: bool


def solve_l1(
    problem: PruningProblem,
    lam: float,
    *,
    tol: float = 1e-6,
    max_sweeps: int = 2000,
    initial: FloatArray | None = None,
    lam_max: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> L1Solution:
    """Minimise ``L(w) + lam * ||w||_1`` over the problem's edges to a certified optimum.

    Args:
        problem: the objective (see objective.py).
        lam: absolute L1 strength, ``>= 0``. Use :func:`relative_lambda` to derive it from a
            scale-free ``tau``. ``lam == 0`` is the unpenalised refit.
        tol: stop when ``gap / primal <= tol`` (``lam > 0``) or when the KKT residual relative to
            ``lambda_max`` is ``<= tol`` (``lam == 0``, where no dual gap is available).
        max_sweeps: budget in full-sweep equivalents; ``converged`` is false if it runs out.
        initial: warm start ``(E,)``; zeros if ``None``.
        lam_max: ``lambda_max(problem)`` if already known (it costs one gradient).
        should_stop: polled between working-set rounds; when it returns true the solve raises
            :class:`SolveCancelled` (a caller's cancel, e.g. CancelPruning).

    Raises:
        ValueError: ``lam`` negative or not finite, ``tol <= 0``, or ``initial`` of the wrong
            shape or not finite (the compiled kernels assume finite values).
    """
    if not 0.0 <= lam < np.inf:
        raise ValueError(f"lam: must be finite and >= 0, got {lam}")
    if not tol > 0.0:
        raise ValueError(f"tol: must be > 0, got {tol}")
    n_edges = problem.n_edges
    if initial is None:
        w = np.zeros(n_edges)
    else:
        if initial.shape != (n_edges,):
            raise ValueError(f"initial: expected shape ({n_edges},), got {initial.shape}")
        if not np.all(np.isfinite(initial)):
            raise ValueError("initial: every warm-start weight must be finite (no NaN or inf)")
        w = np.array(initial, dtype=np.float64)
    lmax = lambda_max(problem) if lam_max is None else lam_max
    m = margins(problem, w)
    alive = np.ones(n_edges, dtype=bool)  # not yet screened out
    sweeps = 0.0
    if initial is None and 0.0 < lam < _PATH_START * lmax:
        # Continuation: a cold start at small lam wanders through dense iterates (thousands of
        # sweeps measured at tau = 0.001); walking down from lambda_max keeps iterates sparse.
        for step_lam in _path(lmax, lam):
            _poll(should_stop)
            sweeps += _solve_path_point(problem, w, step_lam, m, lmax)
    previous_signs = np.sign(w)
    while True:
        _poll(should_stop)
        r = np.maximum(problem.thresholds - m, 0.0)
        grad = edge_gradient(problem, r)
        cert = certificate(problem, w, lam, m, lmax)
        done = cert.relative_gap <= tol if lam > 0.0 else cert.kkt_residual <= tol
        if done or sweeps >= max_sweeps or n_edges == 0:
            return L1Solution(
                weights=w,
                lam=lam,
                certificate=cert,
                sweeps=sweeps,
                screened=int(n_edges - np.count_nonzero(alive)),
                screened_mask=~alive,
                converged=bool(done),
            )
        if lam > 0.0:
            alive &= ~_gap_safe_zero(grad, lam, cert.gap)
            dead_nonzero = ~alive & (w != 0.0)
            if np.any(dead_nonzero):
                w[dead_nonzero] = 0.0
                m = margins(problem, w)
        working = alive & ((w != 0.0) | (np.abs(grad) >= _WORKING_SET_SLACK * lam))
        if lam == 0.0:
            working = alive.copy()
        sweeps += _sweep_working_set(problem, w, lam, m, working, tol) / max(n_edges, 1)
        signs = np.sign(w)
        # Newton only pays once the piece has settled; an unchanged sign pattern is the cheap cue.
        if lam == 0.0 or np.array_equal(signs, previous_signs):
            w, m, _ = newton_polish(problem, w, lam, m)
        previous_signs = signs


class SolveCancelled(Exception):
    """The caller's ``should_stop`` asked the solve to stop; no result is returned."""


def _poll(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise SolveCancelled("the solve was cancelled by its caller")


def _path(lmax: float, lam: float) -> list[float]:
    """Geometric path from ``_PATH_START * lmax`` down to (excluding) ``lam``."""
    count = int(np.ceil(np.log(_PATH_START * lmax / lam) / np.log(_PATH_RATIO)))
    return [_PATH_START * lmax / _PATH_RATIO**k for k in range(count)]


def _solve_path_point(
    problem: PruningProblem, w: FloatArray, lam: float, m: FloatArray, lmax: float
) -> float:
    """Bring ``w`` (in place) near the optimum for ``lam``: a few working-set rounds, no certificate
    beyond ``_PATH_TOL``. Returns sweeps used."""
    sweeps = 0.0
    for _ in range(_PATH_ROUNDS):
        r = np.maximum(problem.thresholds - m, 0.0)
        grad = edge_gradient(problem, r)
        cert = certificate(problem, w, lam, m, lmax)
        if cert.relative_gap <= _PATH_TOL:
            break
        working = (w != 0.0) | (np.abs(grad) >= _WORKING_SET_SLACK * lam)
        sweeps += _sweep_working_set(problem, w, lam, m, working, _PATH_TOL) / max(w.size, 1)
    return sweeps


def _gap_safe_zero(grad: FloatArray, lam: float, gap: float) -> np.ndarray:
    """Edges whose optimal weight is provably zero (gap-safe sphere test).

    The dual is ``n``-strongly concave, so ``||theta* - theta||_2 <= sqrt(2 gap / n)``; an edge's
    dual column has ``2n`` entries of +-1, norm ``sqrt(2n)``, hence the radius ``2 sqrt(gap)``.
    The test must use the same (rescaled, feasible) dual point as the gap, so ``grad`` is
    scaled the same way here.
    """
    worst = float(np.max(np.abs(grad))) if grad.size else 0.0
    scale = 1.0 if worst <= lam else lam / worst
    return np.asarray(scale * np.abs(grad) + 2.0 * np.sqrt(gap) < lam)


def _sweep_working_set(
    problem: PruningProblem,
    w: FloatArray,
    lam: float,
    m: FloatArray,
    working: np.ndarray,
    tol: float,
) -> int:
    """Run coordinate sweeps over ``working`` until its own subproblem settles.

    Every ``_ANDERSON_DEPTH`` sweeps the last iterates are extrapolated (Anderson acceleration of
    coordinate descent, Bertrand & Massias 2021) and the extrapolated point is kept only if its
    objective is lower, so the iteration stays monotone. Updates ``w`` and ``m`` in place and
    returns the number of edge visits made.
    """
    idx = np.flatnonzero(working)
    if not idx.size:
        return 0
    visits = 0
    history = [w[idx].copy()]
    for _ in range(_INNER_SWEEPS):
        change = kernels.cd_sweep(
            problem.edge_i,
            problem.edge_j,
            idx,
            problem.inputs_t,
            problem.targets_t,
            problem.thresholds,
            w,
            m,
            lam,
        )
        visits += idx.size
        history.append(w[idx].copy())
        if len(history) == _ANDERSON_DEPTH + 1:
            _anderson(problem, w, lam, m, idx, np.array(history))
            history = [w[idx].copy()]
        scale = float(np.max(np.abs(w[idx])))
        # Inner convergence is only a heuristic to return to the certificate; the stopping
        # decision itself is always the gap.
        if change <= tol * max(scale, 1e-300):
            break
    return visits


def _anderson(
    problem: PruningProblem,
    w: FloatArray,
    lam: float,
    m: FloatArray,
    idx: IndexArray,
    iterates: FloatArray,
) -> None:
    """Replace ``w[idx]`` (and ``m``) by the Anderson extrapolation of ``iterates`` if better."""
    diffs = np.diff(iterates, axis=0)
    gram = diffs @ diffs.T
    reg = 1e-12 * float(np.trace(gram)) + 1e-300
    try:
        z = np.linalg.solve(gram + reg * np.eye(gram.shape[0]), np.ones(gram.shape[0]))
    except np.linalg.LinAlgError:
        return
    if not np.isfinite(z).all() or z.sum() == 0.0:
        return
    coef = z / z.sum()
    trial = w.copy()
    trial[idx] = coef @ iterates[1:]
    m_trial = margins(problem, trial)
    if _objective(problem, trial, lam, m_trial) < _objective(problem, w, lam, m):
        w[idx] = trial[idx]
        m[...] = m_trial


def _objective(problem: PruningProblem, w: FloatArray, lam: float, m: FloatArray) -> float:
    r = np.maximum(problem.thresholds - m, 0.0)
    return float(0.5 * np.sum(r * r) / problem.n_samples + lam * np.sum(np.abs(w)))


def relative_lambda(problem: PruningProblem, tau: float) -> tuple[float, float]:
    """Return ``(lam, lambda_max)`` with ``lam = tau * lambda_max`` for ``tau`` in ``[0, 1]``.

    ``tau`` is scale-free: 1 prunes every edge, 0 prunes none by L1, and its meaning does not
    change as the weights of a growing graph grow.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau: must be in [0, 1] (a fraction of lambda_max), got {tau}")
    lmax = lambda_max(problem)
    return tau * lmax, lmax
