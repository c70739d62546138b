"""Exact DMD with rank truncation and an optional scale-free Tikhonov term.

Given snapshot pairs (X, Y) with Y ~= A X (see snapshots.py; pairs never cross traces), the fit:

1. X ~= U S V^T, truncated to rank r (svd.py picks the SVD path);
2. the reduced operator  Atilde = U^T Y V diag(s / (s^2 + tikhonov * s_1^2))  (r x r),
   which is U^T Y V S^-1 without the Tikhonov term;
3. Atilde W = W Lambda  (eigenvalues lambda are those of DMD);
4. exact modes (Tu et al. 2014)  Phi = Y V diag(1/s_reg) W Lambda^-1, scaled so that U^T Phi = W
   with unit columns of W; a mode whose |lambda| is ~0 takes its projected form U w instead.

Amplitudes measure what each mode carries forward: each snapshot's POD coordinates z = U^T x are
expanded in the eigenvectors (a = W^-1 z), and amplitude_i = |lambda_i| * sqrt(mean over all
snapshots of |a_i|^2), the RMS size of mode i's term in the model's one-step prediction
Phi Lambda a. For a persistent mode (|lambda| ~ 1) it is its RMS modal amplitude; a mode that only
absorbs white noise (|lambda| ~ 0) gets a small amplitude even when non-normal eigenvectors
inflate its coordinate, so over-ranked fits do not rank noise modes as dominant. Units are those
of the activations, and batch and online fits (online_dmd.py, with forgetting weights) use the
same definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from .arrays import (
    ComplexArray,
    FloatArray,
    readonly,
    require_in_range,
    require_positive,
    require_rank,
)
from .snapshots import SnapshotWindow
from .svd import SvdMethod, truncated_svd

DEFAULT_RANK = 50

# Eigenvalues this small relative to the largest make the exact-mode formula divide by ~0.
_ZERO_EIGENVALUE = 1e-10


@dataclass(frozen=True, eq=False)
class DmdModel:
    """A fitted DMD model over `concept_ids`, sampled every `dt` seconds.

    Modes are sorted by amplitude, largest first. Shapes: n = len(concept_ids), r = rank.

    Attributes:
        eigenvalues: (r,) discrete-time eigenvalues lambda (per sample).
        modes: (n, r) exact DMD modes; U^T modes = eigenvectors.
        amplitudes: (r,) |lambda| times the RMS modal coordinate over the fitted snapshots
            (activation units; see the module docstring).
        basis: (n, r) orthonormal POD basis U of the fitted X.
        singular_values: (r,) singular values of X kept by the truncation.
        reduced_operator: (r, r) Atilde in POD coordinates.
        eigenvectors: (r, r) unit columns W with Atilde W = W diag(eigenvalues).
        n_pairs, n_traces: data the fit saw.
        svd_method: SVD path taken ("exact", "gram" or "randomized").
    """

    concept_ids: tuple[str, ...]
    dt: float
    eigenvalues: ComplexArray
    modes: ComplexArray
    amplitudes: FloatArray
    basis: FloatArray
    singular_values: FloatArray
    reduced_operator: FloatArray
    eigenvectors: ComplexArray
    n_pairs: int
    n_traces: int
    svd_method: str

    @property
    def rank(self) -> int:
        """Number of modes."""
        return int(self.eigenvalues.shape[0])

    @property
    def continuous_eigenvalues(self) -> ComplexArray:
        """ln(lambda) / dt in 1/s (real part growth rate, imaginary part angular frequency)."""
        with np.errstate(divide="ignore"):
            return np.asarray(np.log(self.eigenvalues) / self.dt, dtype=np.complex128)

    @property
    def frequencies_hz(self) -> FloatArray:
        """arg(lambda) / (2 pi dt) in Hz, in (-1/(2 dt), 1/(2 dt)] (conjugate pairs share |f|)."""
        return np.asarray(np.angle(self.eigenvalues) / (2 * np.pi * self.dt), dtype=np.float64)

    @property
    def growth_rates(self) -> FloatArray:
        """ln|lambda| / dt in 1/s: > 0 grows, < 0 decays, -inf for lambda = 0."""
        with np.errstate(divide="ignore"):
            return np.asarray(np.log(np.abs(self.eigenvalues)) / self.dt, dtype=np.float64)

    @property
    def damping_ratios(self) -> FloatArray:
        """-Re(s) / |s| for s = ln(lambda) / dt: 1 pure decay, 0 undamped, < 0 growing.

        A mode with s = 0 (lambda = 1, constant) has ratio 0; lambda = 0 has ratio 1.
        """
        s = self.continuous_eigenvalues
        magnitude = np.abs(s)
        ratio = np.zeros(s.shape, dtype=np.float64)
        finite = np.isfinite(magnitude) & (magnitude > 0)
        ratio[finite] = -s.real[finite] / magnitude[finite]
        ratio[~np.isfinite(magnitude)] = 1.0
        return ratio

    def select(self, indices: Sequence[int]) -> DmdModel:
        """The model restricted to the modes at `indices` (order kept as given)."""
        index = np.asarray(list(indices), dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.rank):
            raise ValueError(f"mode indices must lie in [0, {self.rank}), got {list(indices)}")
        return replace(
            self,
            eigenvalues=readonly(self.eigenvalues[index].copy()),
            modes=readonly(self.modes[:, index].copy()),
            amplitudes=readonly(self.amplitudes[index].copy()),
            eigenvectors=readonly(self.eigenvectors[:, index].copy()),
        )


def fit_dmd(
    window: SnapshotWindow,
    dt: float,
    *,
    rank: int = DEFAULT_RANK,
    tikhonov: float = 0.0,
    svd_method: SvdMethod = "auto",
    seed: int = 0,
    forgetting: float | None = None,
) -> DmdModel:
    """Fit exact DMD of rank <= `rank` to the snapshot pairs of `window`.

    Args:
        window: traces restricted to the active concepts (snapshots.build_window).
        dt: sampling interval in seconds, > 0.
        rank: truncation rank r (default 50); lowered to the numerical rank of X.
        tikhonov: scale-free ridge strength in [0, 1]: the term added to each s_i^2 is
            tikhonov * s_1^2, so 1e-3 damps directions carrying < ~3% of the leading singular
            value, whatever the units of the data. 0 (default) is plain exact DMD.
        svd_method: SVD path, see svd.truncated_svd ("auto" is certified to match "exact").
        seed: seed of the randomized SVD start.
        forgetting: if given, in (0, 1]: pair j of m (traces taken in chronological order) gets
            weight forgetting^(m - 1 - j), the weighting online_dmd.OnlineDmd applies, so a
            periodic refit and the online model estimate the same operator.

    Raises:
        ValueError: on dt <= 0, rank < 1, tikhonov outside [0, 1], forgetting outside (0, 1],
            or all-zero data.
    """
    require_positive(dt, "dt")
    require_rank(rank)
    require_in_range(tikhonov, "tikhonov", 0.0, 1.0)
    x, y = window.pairs()
    weights = np.ones(x.shape[1])
    if forgetting is not None:
        require_in_range(forgetting, "forgetting", 1e-12, 1.0)
        weights = forgetting ** np.arange(x.shape[1] - 1, -1, -1, dtype=np.float64)
        # Weighted least squares: scale both columns of each pair by sqrt(weight).
        x = x * np.sqrt(weights)
        y = y * np.sqrt(weights)
    svd = truncated_svd(x, rank, method=svd_method, seed=seed)
    u, s, vh = svd.u, svd.s, svd.vh
    s_reg = (s**2 + tikhonov * s[0] ** 2) / s
    yv = y @ vh.T  # (n, r): the only pass over Y
    atilde = (u.T @ yv) / s_reg
    eigenvalues, w = np.linalg.eig(atilde)
    eigenvalues = eigenvalues.astype(np.complex128)
    w = w.astype(np.complex128)
    w /= np.linalg.norm(w, axis=0)
    modes = (yv / s_reg) @ w
    scale = np.abs(eigenvalues)
    exact = scale > _ZERO_EIGENVALUE * max(float(scale.max()), 1e-300)
    modes[:, exact] /= eigenvalues[exact]
    modes[:, ~exact] = u @ w[:, ~exact]
    amplitudes = np.abs(eigenvalues) * _rms_modal_coordinates(window, u, s, vh, w, weights)
    order = mode_order(eigenvalues, amplitudes)
    return DmdModel(
        concept_ids=window.concept_ids,
        dt=float(dt),
        eigenvalues=readonly(eigenvalues[order]),
        modes=readonly(np.ascontiguousarray(modes[:, order])),
        amplitudes=readonly(amplitudes[order]),
        basis=readonly(u),
        singular_values=readonly(s),
        reduced_operator=readonly(np.asarray(atilde, dtype=np.float64)),
        eigenvectors=readonly(np.ascontiguousarray(w[:, order])),
        n_pairs=window.n_pairs,
        n_traces=len(window.traces),
        svd_method=svd.method,
    )


def mode_order(eigenvalues: ComplexArray, amplitudes: FloatArray) -> NDArray[np.intp]:
    """Indices sorting modes by amplitude, largest first, conjugate pairs adjacent.

    The two halves of a conjugate pair have equal amplitudes up to rounding, so each is ranked by
    its pair's larger amplitude and the half with positive imaginary part comes first; the
    order then does not depend on rounding.
    """
    pair_amplitude = amplitudes.copy()
    for i, lam in enumerate(eigenvalues):
        if lam.imag != 0:
            distance = np.abs(eigenvalues - np.conj(lam))
            distance[i] = np.inf
            j = int(np.argmin(distance))
            if distance[j] <= 1e-8 * max(1.0, abs(lam)):
                pair_amplitude[i] = max(amplitudes[i], amplitudes[j])
    return np.lexsort((-np.sign(eigenvalues.imag), -pair_amplitude))


def _rms_modal_coordinates(
    window: SnapshotWindow,
    u: FloatArray,
    s: FloatArray,
    vh: FloatArray,
    w: ComplexArray,
    weights: FloatArray,
) -> FloatArray:
    # POD coordinates of the (weighted) X columns are s * vh, no extra pass over the data. The
    # last snapshot of each trace is not in X; with uniform weights it is projected as well.
    z = (s[:, None] * vh).astype(np.complex128)
    total = float(np.sum(weights))
    if np.all(weights == 1.0):
        last = np.stack([trace[:, -1] for trace in window.traces], axis=1)
        z = np.concatenate([z, (u.T @ last).astype(np.complex128)], axis=1)
        total += last.shape[1]
    a = np.linalg.solve(w, z)
    rms = np.sqrt(np.sum(np.abs(a) ** 2, axis=1) / total)
    return np.asarray(rms, dtype=np.float64)


def one_step_residual(model: DmdModel, window: SnapshotWindow) -> float:
    """||Y - U Atilde U^T X||_F / ||Y||_F over the pairs of `window` (dimensionless).

    Raises:
        ValueError: when `window` is over other concepts than the model.
    """
    if window.concept_ids != model.concept_ids:
        raise ValueError("window.concept_ids differ from the model's; build the window with them")
    x, y = window.pairs()
    u = model.basis
    predicted = u @ (model.reduced_operator @ (u.T @ x))
    return float(np.linalg.norm(y - predicted) / np.linalg.norm(y))
