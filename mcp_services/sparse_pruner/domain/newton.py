"""Active-set Newton polishing: finish a coordinate-descent run with one linear solve.

The pruning loss is piecewise quadratic. Once the support (nonzero edges and their signs) and the
set of samples with a positive hinge have settled, the objective on that piece is the quadratic::

    Q(w_S) = 1/(2n) * ||t_A - A_AS w_S||^2 + lam * sign_S^T w_S

whose minimiser solves ``A_AS^T A_AS w_S = A_AS^T t_A - n * lam * sign_S``. When the guess of the
piece is right this lands on the exact optimum, which coordinate descent only approaches linearly
(slowly when the support is about as large as the active sample set, the usual case here). The
step is kept only if it lowers the true objective, so a wrong guess costs one solve and no
accuracy.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .graph import FloatArray
from .objective import PruningProblem, margins

# Up to this many support edges the normal matrix is factorised densely (milliseconds);
# above it truncated conjugate gradients on sparse products avoid the cubic cost and the fill-in
# of a sparse factorisation (the normal matrix of a random graph's edges fills in near-densely).
# Measured at 20k edges, tau 0.1: two dense solves of ~2500 edges took 0.5 s of a 0.7 s solve;
# with CG the solve took 0.09 s.
_DENSE_LIMIT = 500
_CG_MAXITER = 500
# CG stops once the normal-equation residual is this fraction of its value at the start.
_CG_FORCING = 1e-2
# Newton steps per polish; on the right piece one suffices, a few more fix a nearly right guess.
_MAX_NEWTON_STEPS = 8
_MAX_HALVINGS = 6


def support_design(
    problem: PruningProblem, support: np.ndarray, active: np.ndarray
) -> sp.csr_matrix:
    """Return ``A_AS``: rows are active samples ``(i, k)`` flattened as ``i * n + k``.

    Only rows where ``active`` (``(N, n)`` bool) holds carry entries; the matrix keeps all
    ``N * n`` rows so row indices stay aligned with the flattened thresholds.
    """
    n = problem.n_samples
    ei = problem.edge_i[support]
    ej = problem.edge_j[support]
    cols = np.arange(ei.size)
    k = np.arange(n)
    rows_i = ei[:, None] * n + k[None, :]
    rows_j = ej[:, None] * n + k[None, :]
    val_i = problem.targets_t[ei] * problem.inputs_t[ej]
    val_j = problem.targets_t[ej] * problem.inputs_t[ei]
    act = active.ravel()
    rows = np.concatenate([rows_i.ravel(), rows_j.ravel()])
    vals = np.concatenate([val_i.ravel(), val_j.ravel()])
    col = np.concatenate([np.repeat(cols, n), np.repeat(cols, n)])
    keep = act[rows]
    shape = (problem.n_concepts * n, int(ei.size))
    return sp.csr_matrix((vals[keep], (rows[keep], col[keep])), shape=shape)


def newton_polish(
    problem: PruningProblem, w: FloatArray, lam: float, m: FloatArray
) -> tuple[FloatArray, FloatArray, bool]:
    """Run semismooth Newton steps on the current support while they lower the objective.

    Each step re-reads the piece (active samples, signs), solves its quadratic, projects the
    target onto the current orthant (a weight that would change sign stops at zero, as in
    OWL-QN) and backtracks until the true objective goes down. Returns ``(w, m, improved)``;
    the inputs are returned unchanged when no step helped.
    """
    improved = False
    base = _objective(problem, w, lam, m)
    for _ in range(_MAX_NEWTON_STEPS):
        step_result = _newton_step(problem, w, lam, m, base)
        if step_result is None:
            break
        w, m, value = step_result
        gain = base - value
        base = value
        improved = True
        if gain <= 1e-15 * max(abs(value), 1e-300):
            break
    return w, m, improved


def _newton_step(
    problem: PruningProblem, w: FloatArray, lam: float, m: FloatArray, base: float
) -> tuple[FloatArray, FloatArray, float] | None:
    # With lam > 0 the piece includes the signs, so only the nonzero edges move; the unpenalised
    # refit (lam == 0) has no kink and moves every edge.
    support = np.flatnonzero(w) if lam > 0.0 else np.arange(w.size)
    if not support.size:
        return None
    active = problem.thresholds - m > 0.0
    if not np.any(active):
        return None
    n = problem.n_samples
    design = support_design(problem, support, active)
    t = np.where(active, problem.thresholds, 0.0).ravel()
    signs = np.sign(w[support])
    rhs = design.T @ t - n * lam * signs
    normal = (design.T @ design).tocsr()
    target = _solve_normal(normal, rhs, w[support])
    if target is None:
        return None
    if lam > 0.0:
        target = np.where(np.sign(target) == signs, target, 0.0)
    step = 1.0
    # The Newton point is exact on the guessed piece; halving covers a partly wrong guess.
    for _ in range(_MAX_HALVINGS):
        trial = w.copy()
        trial[support] = w[support] + step * (target - w[support])
        m_trial = margins(problem, trial)
        value = _objective(problem, trial, lam, m_trial)
        if value < base:
            return trial, m_trial, value
        step *= 0.5
    return None


def _solve_normal(normal: sp.csr_matrix, rhs: FloatArray, start: FloatArray) -> FloatArray | None:
    """Solve ``normal @ x = rhs``; ``None`` if it has no usable solution."""
    size = rhs.size
    # A ridge far below the curvature of any used direction keeps a rank-deficient piece solvable
    # (more support edges than active samples) and picks the solution nearest the start.
    diag = normal.diagonal()
    ridge = 1e-10 * float(diag.max()) if diag.size else 0.0
    if size <= _DENSE_LIMIT:
        dense = normal.toarray()
        dense[np.diag_indices(size)] += ridge
        try:
            delta = np.linalg.solve(dense, rhs - normal @ start - ridge * start)
        except np.linalg.LinAlgError:
            return None
        x = start + delta
    else:
        precond = sp.diags(1.0 / np.maximum(diag + ridge, 1e-300))
        op = normal + ridge * sp.identity(size, format="csr")
        # Truncated Newton: reduce the residual at the start a hundredfold, not to round-off.
        # Solving to 1e-12 pulled in near-null directions of a rank-deficient piece (steps of
        # 0.05 where 1e-6 was due, flipping signs), so the step failed the objective check and
        # the solve crawled (measured 6.3 s -> 0.7 s at tau 0.03, 50k edges).
        floor = _CG_FORCING * float(np.linalg.norm(rhs - op @ start))
        x, _ = spla.cg(op, rhs, x0=start, M=precond, rtol=1e-12, atol=floor, maxiter=_CG_MAXITER)
    return x if np.all(np.isfinite(x)) else None


def _objective(problem: PruningProblem, w: FloatArray, lam: float, m: FloatArray) -> float:
    r = np.maximum(problem.thresholds - m, 0.0)
    return float(0.5 * np.sum(r * r) / problem.n_samples + lam * np.sum(np.abs(w)))
