"""Non-negative lasso for many small regressions at once, on their Gram matrices.

Solves, for each problem b independently,

    minimise over beta >= 0:   1/2 beta^T G_b beta - c_b^T beta + lam_b * sum(beta)

which is (1/2n)||y - X beta||^2 + lam ||beta||_1 with G = X^T X / n and c = X^T y / n. All
problems advance together with FISTA (Beck & Teboulle 2009) and gradient-based restarts
(O'Donoghue & Candes 2015), so the cost is one batched (B, p, p) x (B, p) product per iteration
and no Python loop over problems or coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import BoolArray, FloatArray


@dataclass(frozen=True, eq=False)
class LassoSolution:
    """beta (B, p) >= 0, iterations run, and whether every problem met the tolerance."""

    beta: FloatArray
    iterations: int
    converged: bool


def solve_nonneg_lasso(
    gram: FloatArray,
    linear: FloatArray,
    penalty: FloatArray,
    *,
    active: BoolArray | None = None,
    tolerance: float = 1e-10,
    max_iter: int = 20_000,
) -> LassoSolution:
    """Solve B non-negative lasso problems given G (B, p, p), c (B, p), lam (B,).

    Args:
        gram: symmetric positive semi-definite G per problem.
        linear: c per problem.
        penalty: lam >= 0 per problem.
        active: (B, p) mask of coefficients allowed to be non-zero (default all).
        tolerance: stop when max |beta_k+1 - beta_k| <= tolerance * max(1, max |beta|).
        max_iter: iteration cap.
    """
    n_problems, p = linear.shape
    mask = np.ones((n_problems, p), dtype=bool) if active is None else active
    g = gram * mask[:, :, None] * mask[:, None, :]
    c = linear * mask
    # 1 / L with L >= the largest eigenvalue of each G guarantees descent. The Gershgorin bound
    # (largest absolute row sum) is safe and avoids B small eigensolves.
    lipschitz = np.max(np.sum(np.abs(g), axis=2), axis=1)
    step = 1.0 / np.maximum(lipschitz, 1e-300)
    shrink = (penalty * step)[:, None]
    beta = np.zeros((n_problems, p))
    momentum = beta.copy()
    t = np.ones(n_problems)
    for iteration in range(1, max_iter + 1):
        gradient = np.einsum("bij,bj->bi", g, momentum) - c
        new = np.maximum(momentum - step[:, None] * gradient - shrink, 0.0) * mask
        change = float(np.max(np.abs(new - beta)))
        # Restart a problem's momentum when it points uphill (per problem, so one slow problem
        # does not reset the others).
        uphill = np.sum((momentum - new) * (new - beta), axis=1) > 0
        t = np.where(uphill, 1.0, t)
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        momentum = new + ((t - 1.0) / t_next)[:, None] * (new - beta)
        beta, t = new, t_next
        if change <= tolerance * max(1.0, float(np.max(np.abs(beta)))):
            return LassoSolution(beta, iteration, True)
    return LassoSolution(beta, max_iter, False)
