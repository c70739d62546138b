"""Sparsity-promoting mode selection (Jovanovic, Schmid & Nichols 2014), for several traces.

Given a DMD model, the data of each trace k (its snapshots in POD coordinates, Z_k = U^T X_k)
is explained as Z_k ~= W diag(b_k) Vand_k with Vand_k[i, t] = lambda_i^t. Mode i is kept when
its amplitudes across traces, the row b_i = (b_i1 .. b_iK), are not all zero. The selection
solves the group lasso

    minimise  sum_k ||Z_k - W diag(b_k) Vand_k||_F^2  +  gamma * sum_i ||b_i||_2

by ADMM; for one trace this is exactly Jovanovic's L1 problem (||b_i||_2 = |b_i|). The kept
modes' amplitudes are then refit without penalty ("polish"), so the L1 term chooses modes but
does not bias the amplitudes reported.

Strength (KCL_L1_STRENGTH) is scale-free: gamma = strength * gamma_max, where gamma_max =
2 max_i ||q_i|| is the smallest gamma at which every amplitude is zero (the lasso's lambda_max).
So 0 keeps every mode, 1 keeps none, and the same strength means the same thing whatever the
units of the activations, the number of snapshots or the number of traces: a mode survives
roughly when its data-weighted amplitude exceeds `strength` times the largest one's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .arrays import ComplexArray, FloatArray, readonly, require_in_range, require_rank
from .dmd import DmdModel
from .snapshots import SnapshotWindow

DEFAULT_MAX_MODES = 100

# |lambda|^T beyond e^600 overflows the Vandermonde products in float64.
_MAX_LOG_GROWTH = 600.0


@dataclass(frozen=True, eq=False)
class SparseModeSelection:
    """The modes kept at one strength and their polished amplitudes.

    Attributes:
        strength: the scale-free strength asked for, in [0, 1].
        gamma: the absolute penalty used (strength * gamma_max).
        gamma_max: smallest penalty that removes every mode.
        selected: indices of the kept modes in the model, ascending.
        amplitudes: (r,) RMS over traces of the polished |b_ik|; 0 for dropped modes.
        trace_amplitudes: (r, K) polished b_ik (initial modal amplitude of mode i in trace k).
        relative_error: sqrt(residual / ||Z||^2) with the kept modes, in POD coordinates.
        relative_error_all: the same with every mode (least-squares amplitudes).
        iterations: ADMM iterations run.
        converged: whether ADMM met its tolerance before the iteration cap.
    """

    strength: float
    gamma: float
    gamma_max: float
    selected: tuple[int, ...]
    amplitudes: FloatArray
    trace_amplitudes: ComplexArray
    relative_error: float
    relative_error_all: float
    iterations: int
    converged: bool

    @property
    def n_selected(self) -> int:
        """Number of modes kept."""
        return len(self.selected)

    def apply(self, model: DmdModel) -> DmdModel:
        """`model` restricted to the kept modes, with the polished amplitudes."""
        kept = model.select(self.selected)
        return replace(kept, amplitudes=readonly(self.amplitudes[list(self.selected)].copy()))


@dataclass(frozen=True, eq=False)
class _Problem:
    p: ComplexArray  # (K, r, r)
    q: ComplexArray  # (K, r)
    energy: FloatArray  # (K,) ||Z_k||_F^2


def select_modes(
    model: DmdModel,
    window: SnapshotWindow,
    *,
    strength: float,
    max_modes: int = DEFAULT_MAX_MODES,
    tolerance: float = 1e-7,
    max_iter: int = 20_000,
) -> SparseModeSelection:
    """Choose modes of `model` by the group-L1 penalty at `strength`, then polish amplitudes.

    Conjugate pairs are kept or dropped together (a real signal needs both halves). When more
    than `max_modes` modes survive, the ones with the largest penalised amplitudes are kept.

    Args:
        model: a fit over `window.concept_ids`.
        window: the data whose reconstruction is traded against sparsity (normally the fitted
            window).
        strength: scale-free penalty in [0, 1] (see module docstring).
        max_modes: hard cap on modes kept, >= 1 (default 100).
        tolerance: relative ADMM stopping tolerance on primal and dual residuals.
        max_iter: ADMM iteration cap.

    Raises:
        ValueError: on strength outside [0, 1], max_modes < 1, a window over other concepts,
            or a trace so long that a growing mode overflows (split it).
    """
    require_in_range(strength, "strength", 0.0, 1.0)
    require_rank(max_modes, "max_modes")
    problem = _build_problem(model, window)
    r = model.rank
    group_q = np.linalg.norm(problem.q, axis=0)
    gamma_max = 2.0 * float(group_q.max())
    gamma = strength * gamma_max
    if gamma >= gamma_max:
        # At gamma_max the optimum is b = 0 exactly; ADMM would only creep towards it.
        beta, iterations, converged = np.zeros_like(problem.q), 0, True
    else:
        beta, iterations, converged = _admm(problem, gamma, tolerance, max_iter)
    score = np.linalg.norm(beta, axis=0)
    support = _conjugate_closed(model.eigenvalues, score > 0)
    support = _cap(model.eigenvalues, support, score, max_modes)
    selected = tuple(int(i) for i in np.flatnonzero(support))
    b = _polish(problem, support)
    everything = _polish(problem, np.ones(r, dtype=bool))
    amplitudes = np.sqrt(np.mean(np.abs(b) ** 2, axis=0))
    return SparseModeSelection(
        strength=float(strength),
        gamma=gamma,
        gamma_max=gamma_max,
        selected=selected,
        amplitudes=readonly(np.asarray(amplitudes, dtype=np.float64)),
        trace_amplitudes=readonly(np.ascontiguousarray(b.T)),
        relative_error=_relative_error(problem, b),
        relative_error_all=_relative_error(problem, everything),
        iterations=iterations,
        converged=converged,
    )


def _build_problem(model: DmdModel, window: SnapshotWindow) -> _Problem:
    if window.concept_ids != model.concept_ids:
        raise ValueError("window.concept_ids differ from the model's; build the window with them")
    lam = model.eigenvalues
    w = model.eigenvectors
    gram_w = w.conj().T @ w
    log_growth = np.log(np.maximum(np.abs(lam), 1e-300))
    ps, qs, energies = [], [], []
    for trace in window.traces:
        length = trace.shape[1]
        if float(np.max(log_growth)) * (length - 1) > _MAX_LOG_GROWTH:
            raise ValueError(
                f"a trace of {length} snapshots overflows mode |lambda|={np.abs(lam).max():.4g};"
                " split long traces into shorter windows before selecting modes"
            )
        z = model.basis.T @ trace
        vand = lam[:, None] ** np.arange(length)[None, :]
        ps.append(gram_w * np.conj(vand @ vand.conj().T))
        qs.append(np.conj(np.einsum("it,ti->i", vand, z.T @ w)))
        energies.append(float(np.sum(z**2)))
    return _Problem(
        p=np.stack(ps).astype(np.complex128),
        q=np.stack(qs).astype(np.complex128),
        energy=np.asarray(energies, dtype=np.float64),
    )


def _admm(
    problem: _Problem, gamma: float, tolerance: float, max_iter: int
) -> tuple[ComplexArray, int, bool]:
    """Group-lasso ADMM; returns beta (K, r) whose zero columns are the dropped modes."""
    n_traces, r = problem.q.shape
    if gamma == 0.0:
        return _polish(problem, np.ones(r, dtype=bool)), 0, True
    # rho on the scale of P keeps the alpha-step well conditioned whatever the data's units.
    rho = float(np.mean(np.real(np.einsum("kii->k", problem.p)))) / r
    eye = np.eye(r)[None, :, :]
    inverse = np.linalg.inv(problem.p + 0.5 * rho * eye)
    beta = np.zeros((n_traces, r), dtype=np.complex128)
    dual = np.zeros_like(beta)
    threshold = gamma / rho
    for iteration in range(1, max_iter + 1):
        rhs = problem.q + 0.5 * rho * (beta - dual)
        alpha = np.einsum("kij,kj->ki", inverse, rhs)
        v = alpha + dual
        norms = np.linalg.norm(v, axis=0)
        shrink = np.where(norms > threshold, 1.0 - threshold / np.maximum(norms, 1e-300), 0.0)
        beta_old = beta
        beta = v * shrink[None, :]
        dual = dual + alpha - beta
        primal = np.linalg.norm(alpha - beta)
        change = np.linalg.norm(beta - beta_old)
        scale = max(float(np.linalg.norm(alpha)), float(np.linalg.norm(beta)), 1e-300)
        if primal <= tolerance * scale and change <= tolerance * max(
            float(np.linalg.norm(dual)), scale
        ):
            return beta, iteration, True
    return beta, max_iter, False


def _conjugate_closed(eigenvalues: ComplexArray, support: np.ndarray) -> np.ndarray:
    closed = support.copy()
    for i in np.flatnonzero(support):
        partner = _partner(eigenvalues, int(i))
        if partner is not None:
            closed[partner] = True
    return closed


def _partner(eigenvalues: ComplexArray, index: int) -> int | None:
    lam = eigenvalues[index]
    if lam.imag == 0:
        return None
    distance = np.abs(eigenvalues - np.conj(lam))
    distance[index] = np.inf
    j = int(np.argmin(distance))
    return j if distance[j] <= 1e-8 * max(1.0, abs(lam)) else None


def _cap(
    eigenvalues: ComplexArray, support: np.ndarray, score: FloatArray, max_modes: int
) -> np.ndarray:
    if int(np.count_nonzero(support)) <= max_modes:
        return support
    capped = np.zeros_like(support)
    for i in np.argsort(score)[::-1]:
        if not support[i] or capped[i]:
            continue
        partner = _partner(eigenvalues, int(i))
        group = [int(i)] if partner is None else [int(i), partner]
        if int(np.count_nonzero(capped)) + len(group) > max_modes:
            break
        capped[group] = True
    return capped


def _polish(problem: _Problem, support: np.ndarray) -> ComplexArray:
    """Least-squares amplitudes on `support` (zero elsewhere), per trace: (K, r)."""
    n_traces, r = problem.q.shape
    b = np.zeros((n_traces, r), dtype=np.complex128)
    index = np.flatnonzero(support)
    if index.size == 0:
        return b
    for k in range(n_traces):
        sub = problem.p[k][np.ix_(index, index)]
        b[k, index] = np.linalg.lstsq(sub, problem.q[k, index], rcond=None)[0]
    return b


def _relative_error(problem: _Problem, b: ComplexArray) -> float:
    quadratic = np.real(np.einsum("ki,kij,kj->k", b.conj(), problem.p, b))
    linear = 2.0 * np.real(np.einsum("ki,ki->k", problem.q.conj(), b))
    residual = float(np.sum(quadratic - linear + problem.energy))
    return float(np.sqrt(max(residual, 0.0) / float(np.sum(problem.energy))))
