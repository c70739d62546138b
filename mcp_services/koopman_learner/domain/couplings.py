"""Sparse Kuramoto couplings from phase trajectories, with an identifiability check.

For oscillator i the model (kuramoto.py) is a linear regression in K[i, :]:

    (theta_i(t+1) - theta_i(t)) / dt = omega_i + sum_j K[i, j] * s_ij(t) + noise,
    s_ij(t) = (sin(theta_j - theta_i)(t) + sin(theta_j - theta_i)(t+1)) / 2,

the trapezoidal rule, second-order accurate in dt. Rows come from consecutive samples of one
trace only; separate runs are never joined when differencing.

Estimation per oscillator:
1. Identifiability. A candidate link j is unidentifiable when theta_j - theta_i barely moves
   (circular spread < `min_phase_spread` rad: the pair is phase-locked, its regressor is a
   constant absorbed by omega_i) or when its regressor lies within `collinear_tolerance` of the
   span of the others (pivoted QR; e.g. a locked cluster of three or more). A fully synchronised
   trajectory makes every link unidentifiable and the estimate says so instead of guessing.
2. Selection by non-negative L1 regression on standardised regressors, penalty
   lam_i = strength * sigma_i * sqrt(2 ln P / n): the universal threshold for P candidate links
   in all, n rows, and sigma_i the residual noise of an ordinary least-squares fit (rad/s).
   With strength 1 (default) pure noise enters no link with high probability, without cross
   validation. Couplings are non-negative because the clamp range [0.001, 0.5] is.
3. Refit of the chosen links by least squares (so L1 shrinkage does not bias them), dropping
   links whose refit t-statistic is below the same universal level sqrt(2 ln P): the L1 fit's
   shrinkage of true links leaks into correlated regressors, which would otherwise enter with
   tiny weights.
4. Clamp to [0.001, 0.5] (a refit value below 0.001 drops the link). Then no coupling moves by
   more than 20% from the previous estimate: a previous link the data drops decays by 20% per
   update and is removed once below 0.001; a link new to this estimate enters at its clamped
   value (a relative bound cannot apply to a link that was 0). Unidentifiable links keep their
   previous value.

The trapezoidal error (dt^2 / 12 times the second derivative of the coupling term) acts as
noise correlated with the regressors, so the sampling interval must make it small next to the
phase noise; at dt = 0.05 s with |omega| <= 3 rad/s it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike

from .arrays import (
    BoolArray,
    FloatArray,
    as_float_matrix,
    readonly,
    require_in_range,
    require_positive,
)
from .nonneg_lasso import solve_nonneg_lasso

CouplingStatus = Literal["ok", "partial", "unidentifiable"]

COUPLING_BOUNDS = (0.001, 0.5)
MAX_RELATIVE_CHANGE = 0.2
DEFAULT_MIN_PHASE_SPREAD = 0.1
DEFAULT_COLLINEAR_TOLERANCE = 0.05


@dataclass(frozen=True)
class Link:
    """K[target, source] = weight (rad/s): source pulls target's phase toward its own."""

    target: str
    source: str
    weight: float


@dataclass(frozen=True, eq=False)
class CouplingEstimate:
    """Couplings over `concept_ids` (N of them).

    Attributes:
        couplings: (N, N), K[i, j] >= 0 pull of j on i, zero diagonal, 0 = no link.
        natural_frequencies: (N,) omega_i in rad/s; NaN for an unidentifiable oscillator with no
            previous estimate.
        identifiable: (N,) oscillator i had at least one identifiable candidate link.
        unidentifiable_links: (N, N) links the data cannot determine (value kept from before).
        status: "ok" (every link identifiable), "partial", or "unidentifiable" (no oscillator
            identifiable: K is the previous estimate, or zero, not a guess).
        noise_level: (N,) residual noise sigma_i in rad/s (NaN where unidentifiable).
        penalty: (N,) L1 penalty lam_i used on standardised regressors.
        n_rows: regression rows per oscillator (sum over traces of samples - 1).
        n_clamped: couplings moved into the bounds.
        n_rate_limited: couplings held back by the 20% rule.
        solver_converged: the L1 solver met its tolerance.
    """

    concept_ids: tuple[str, ...]
    couplings: FloatArray
    natural_frequencies: FloatArray
    identifiable: BoolArray
    unidentifiable_links: BoolArray
    status: CouplingStatus
    noise_level: FloatArray
    penalty: FloatArray
    n_rows: int
    n_clamped: int
    n_rate_limited: int
    solver_converged: bool

    def links(self) -> tuple[Link, ...]:
        """The non-zero couplings, strongest first."""
        rows, cols = np.nonzero(self.couplings)
        order = np.argsort(-self.couplings[rows, cols], kind="stable")
        return tuple(
            Link(
                self.concept_ids[rows[k]],
                self.concept_ids[cols[k]],
                float(self.couplings[rows[k], cols[k]]),
            )
            for k in order
        )


@dataclass(frozen=True, eq=False)
class _Regression:
    gram: FloatArray  # (N, p, p) standardised regressors, p = N - 1
    linear: FloatArray  # (N, p)
    scale: FloatArray  # (N, p) std of each raw regressor
    x_mean: FloatArray  # (N, p)
    y_mean: FloatArray  # (N,)
    y_energy: FloatArray  # (N,) mean of centred y^2
    spread: FloatArray  # (N, p) circular spread of theta_j - theta_i
    n_rows: int


def estimate_couplings(
    phase_traces: Sequence[ArrayLike],
    concept_ids: Sequence[str],
    dt: float,
    *,
    strength: float = 1.0,
    previous: CouplingEstimate | None = None,
    min_phase_spread: float = DEFAULT_MIN_PHASE_SPREAD,
    collinear_tolerance: float = DEFAULT_COLLINEAR_TOLERANCE,
) -> CouplingEstimate:
    """Estimate sparse couplings K from unwrapped phases, one (N, T_k) array per trace.

    Args:
        phase_traces: phases in rad, unwrapped along time (phases.py), rows = concept_ids.
        concept_ids: N >= 2 unique ids.
        dt: sampling interval in seconds.
        strength: multiplier of the universal-threshold penalty, >= 0 (1 = default rule;
            larger keeps fewer links, 0 is plain least squares on the identifiable links).
        previous: the last estimate, for the 20% rate limit and unidentifiable links; concepts
            are aligned by id.
        min_phase_spread: circular spread (rad) below which a pair counts as phase-locked.
        collinear_tolerance: sine of the angle (0..1) between a regressor and the span of the
            others below which the link is unidentifiable.

    Raises:
        ValueError: on bad shapes or values, fewer rows than candidate links plus 2, or
            duplicate ids.
    """
    ids = tuple(concept_ids)
    n = len(ids)
    if n < 2 or len(set(ids)) != n:
        raise ValueError("concept_ids must hold at least 2 unique ids")
    require_positive(dt, "dt")
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    require_in_range(min_phase_spread, "min_phase_spread", 0.0, np.pi)
    require_in_range(collinear_tolerance, "collinear_tolerance", 0.0, 1.0)
    reg = _regression(phase_traces, n, dt)
    p = n - 1
    if reg.n_rows < p + 2:
        raise ValueError(
            f"{reg.n_rows} regression rows cannot determine {p} couplings per oscillator;"
            f" send at least {p + 2 + len(phase_traces)} samples in all"
        )
    usable = (reg.spread >= min_phase_spread) & (reg.scale > 0)
    for i in range(n):
        usable[i] &= _independent_columns(reg.gram[i], usable[i], collinear_tolerance)
    identifiable: BoolArray = np.asarray(usable.any(axis=1), dtype=np.bool_)
    sigma = _noise_level(reg, usable)
    candidates = max(int(usable.sum()), 2)
    penalty = strength * sigma * np.sqrt(2.0 * np.log(candidates) / reg.n_rows)
    solution = solve_nonneg_lasso(reg.gram, reg.linear, np.nan_to_num(penalty), active=usable)
    level = strength * np.sqrt(2.0 * np.log(candidates))
    beta = _refit_significant(reg, solution.beta > 0, sigma, level)
    raw = np.where(beta > 0, beta / np.where(reg.scale > 0, reg.scale, 1.0), 0.0)
    omega = reg.y_mean - np.sum(raw * reg.x_mean, axis=1)
    estimate = _to_square(raw)
    locked = ~_to_square(usable.astype(np.float64)).astype(bool)
    np.fill_diagonal(locked, False)
    prev_k, prev_omega = _previous(previous, ids)
    return _finish(
        ids,
        estimate,
        omega,
        identifiable,
        locked,
        sigma,
        penalty,
        reg.n_rows,
        prev_k,
        prev_omega,
        solution.converged,
    )


def _regression(phase_traces: Sequence[ArrayLike], n: int, dt: float) -> _Regression:
    targets, regressors, phasors = [], [], []
    for index, trace in enumerate(phase_traces):
        theta = as_float_matrix(trace, f"phase_traces[{index}]")
        if theta.shape[0] != n:
            raise ValueError(
                f"phase_traces[{index}] has {theta.shape[0]} rows; give one per concept ({n})"
            )
        if theta.shape[1] < 2:
            continue
        targets.append(np.diff(theta, axis=1) / dt)
        regressors.append(
            (
                np.sin(theta[:, :-1]),
                np.cos(theta[:, :-1]),
                np.sin(theta[:, 1:]),
                np.cos(theta[:, 1:]),
            )
        )
        phasors.append(np.exp(1j * theta))
    if not targets:
        raise ValueError("phase_traces hold no pair of consecutive samples")
    y = np.concatenate(targets, axis=1)
    s0, c0, s1, c1 = (np.concatenate([r[k] for r in regressors], axis=1) for k in range(4))
    z = np.concatenate(phasors, axis=1)
    rows = y.shape[1]
    p = n - 1
    gram = np.zeros((n, p, p))
    linear = np.zeros((n, p))
    scale = np.zeros((n, p))
    x_mean = np.zeros((n, p))
    y_mean = y.mean(axis=1)
    y_centred = y - y_mean[:, None]
    # Circular spread of every phase difference at once: |mean_t exp(i(theta_j - theta_i))|.
    resultant = np.abs(z @ z.conj().T) / z.shape[1]
    all_spread = np.sqrt(-2.0 * np.log(np.clip(resultant, 1e-300, 1.0)))
    spread = np.zeros((n, p))
    for i in range(n):
        others = np.arange(n) != i
        # sin(theta_j - theta_i) = sin_j cos_i - cos_j sin_i, averaged over both ends of a step.
        x = 0.5 * (
            s0[others] * c0[i] - c0[others] * s0[i] + s1[others] * c1[i] - c1[others] * s1[i]
        )
        mean = x.mean(axis=1)
        centred = x - mean[:, None]
        std = np.sqrt(np.mean(centred**2, axis=1))
        standardised = centred / np.where(std > 0, std, 1.0)[:, None]
        gram[i] = standardised @ standardised.T / rows
        linear[i] = standardised @ y_centred[i] / rows
        scale[i] = std
        x_mean[i] = mean
        spread[i] = all_spread[i, others]
    return _Regression(
        gram=gram,
        linear=linear,
        scale=scale,
        x_mean=x_mean,
        y_mean=y_mean,
        y_energy=np.mean(y_centred**2, axis=1),
        spread=spread,
        n_rows=rows,
    )


def _independent_columns(gram: FloatArray, usable: BoolArray, tolerance: float) -> BoolArray:
    """Usable columns that are not (nearly) in the span of other usable columns."""
    index = np.flatnonzero(usable)
    keep = usable.copy()
    if index.size < 2:
        return keep
    # Pivoted Cholesky of G (LAPACK dpstrf) is pivoted QR of the regressors: each pivot is the
    # squared sine of the angle between the next column and the span of those before it
    # (standardised columns have unit variance), and it stops once no column exceeds tol.
    _, pivots, rank, _ = scipy.linalg.lapack.dpstrf(
        np.array(gram[np.ix_(index, index)], order="F"), lower=0, tol=tolerance**2
    )
    keep[index[np.asarray(pivots[rank:], dtype=np.int64) - 1]] = False
    return keep


def _noise_level(reg: _Regression, usable: BoolArray) -> FloatArray:
    """Residual sigma (rad/s) of the least-squares fit on the usable links, per oscillator."""
    # One batched solve: unusable columns get an identity block and a zero right-hand side, so
    # their coefficient is 0 and the others solve the sub-problem on the usable columns (which
    # the identifiability check left well conditioned).
    both = usable[:, :, None] & usable[:, None, :]
    eye = np.eye(usable.shape[1], dtype=bool)[None, :, :]
    g = np.where(both, reg.gram, 0.0) + (eye & ~usable[:, :, None])
    c = np.where(usable, reg.linear, 0.0)
    beta = np.linalg.solve(g, c[:, :, None])[:, :, 0]
    # Mean squared residual of centred y = E[y^2] - 2 b.c + b.G.b (all per row).
    mse = reg.y_energy - np.einsum("ij,ij->i", beta, c)
    dof = np.maximum(reg.n_rows - usable.sum(axis=1) - 1, 1)
    sigma = np.sqrt(np.maximum(mse, 0.0) * reg.n_rows / dof)
    return np.asarray(np.where(usable.any(axis=1), sigma, np.nan), dtype=np.float64)


def _refit_significant(
    reg: _Regression, support: BoolArray, sigma: FloatArray, level: float
) -> FloatArray:
    """Least-squares refit on `support`, dropping links whose t-statistic is below `level`.

    The L1 fit shrinks the true links, and the shrinkage leaks into regressors correlated with
    them, which then enter with tiny weights (the irrepresentable condition fails). Requiring
    the refit value to be `level` standard errors from zero, the same universal level as the
    penalty, removes those without a tuning parameter; refit until the support is stable.
    """
    beta = np.zeros_like(reg.linear)
    for i in range(reg.linear.shape[0]):
        index = np.flatnonzero(support[i])
        for _ in range(index.size + 1):
            if index.size == 0:
                break
            g = reg.gram[i][np.ix_(index, index)]
            coef = np.linalg.lstsq(g, reg.linear[i, index], rcond=None)[0]
            # Var(coef) = sigma^2 (G^-1)_jj / n for standardised regressors.
            variance = np.diag(np.linalg.pinv(g)) / reg.n_rows
            t_stat = coef / np.sqrt(np.maximum(variance, 1e-300)) / sigma[i]
            keep = t_stat >= level
            if keep.all():
                beta[i, index] = coef
                break
            index = index[keep]
    return beta


def _to_square(rows: FloatArray) -> FloatArray:
    """(N, N-1) per-oscillator columns (others in order) -> (N, N) with zero diagonal."""
    n = rows.shape[0]
    square = np.zeros((n, n))
    for i in range(n):
        square[i, np.arange(n) != i] = rows[i]
    return square


def _previous(
    previous: CouplingEstimate | None, ids: tuple[str, ...]
) -> tuple[FloatArray, FloatArray]:
    n = len(ids)
    k = np.zeros((n, n))
    omega = np.full(n, np.nan)
    if previous is None:
        return k, omega
    where = {cid: a for a, cid in enumerate(previous.concept_ids)}
    mine = [i for i, cid in enumerate(ids) if cid in where]
    theirs = [where[ids[i]] for i in mine]
    k[np.ix_(mine, mine)] = previous.couplings[np.ix_(theirs, theirs)]
    omega[mine] = previous.natural_frequencies[theirs]
    return k, omega


def _finish(
    ids: tuple[str, ...],
    estimate: FloatArray,
    omega: FloatArray,
    identifiable: BoolArray,
    locked: BoolArray,
    sigma: FloatArray,
    penalty: FloatArray,
    n_rows: int,
    prev_k: FloatArray,
    prev_omega: FloatArray,
    converged: bool,
) -> CouplingEstimate:
    low, high = COUPLING_BOUNDS
    # A refit value below the floor is below the resolution the clamp range declares: the link
    # is dropped rather than raised to the floor.
    present = estimate >= low
    clamped = np.where(present, np.clip(estimate, low, high), 0.0)
    n_clamped = int(np.count_nonzero(present & (clamped != estimate)))
    had = prev_k > 0
    lower = (1.0 - MAX_RELATIVE_CHANGE) * prev_k
    upper = (1.0 + MAX_RELATIVE_CHANGE) * prev_k
    limited = np.where(had, np.clip(clamped, lower, upper), clamped)
    # A link that decays below the floor of the clamp range is gone.
    limited[had & (limited < low)] = 0.0
    n_limited = int(np.count_nonzero(had & ~locked & (limited != clamped)))
    final = np.where(locked, prev_k, limited)
    np.fill_diagonal(final, 0.0)
    omega = np.where(identifiable, omega, prev_omega)
    if not identifiable.any():
        status: CouplingStatus = "unidentifiable"
    elif locked.any():
        status = "partial"
    else:
        status = "ok"
    return CouplingEstimate(
        concept_ids=ids,
        couplings=readonly(final),
        natural_frequencies=readonly(omega),
        identifiable=readonly(identifiable),
        unidentifiable_links=readonly(locked),
        status=status,
        noise_level=readonly(np.where(identifiable, sigma, np.nan)),
        penalty=readonly(np.where(identifiable, penalty, np.nan)),
        n_rows=n_rows,
        n_clamped=n_clamped,
        n_rate_limited=n_limited,
        solver_converged=converged,
    )
