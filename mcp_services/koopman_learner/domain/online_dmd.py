"""Online DMD: rank-1 updates of the operator with exponential forgetting, in a reduced basis.

The operator minimising sum_j rho^(k-j) ||y_j - A x_j||^2 is A_k = R_k Q_k^-1 with
R_k = rho R_{k-1} + y x^T and Q_k = rho Q_{k-1} + x x^T. Following Zhang, Rowley, Deem &
Cattafesta (2019), P = Q^-1 and A are updated by Sherman-Morrison, never by a refit:

    c   = rho + x^T P x
    A  <- A + (y - A x) (P x)^T / c
    P  <- (P - (P x)(P x)^T / c) / rho

Done in the n-dimensional concept space this costs O(n^2) per pair (milliseconds for thousands
of concepts). Here every pair is first projected onto the POD basis U (n x r) of the last full
fit, so an update is two O(n r) projections plus O(r^2) work: tens of microseconds at r = 50.
The projection is the approximation: dynamics leaving span(U) are invisible until the next
refit, which is why the tracker watches the share of snapshot energy the basis still captures
and asks for a refit (`needs_refit`) when it falls, or after `refit_interval` updates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg import blas

from .arrays import (
    ComplexArray,
    FloatArray,
    as_float_matrix,
    as_float_vector,
    readonly,
    require_in_range,
    require_positive,
    require_rank,
)
from .dmd import DmdModel, mode_order
from .snapshots import SnapshotWindow

DEFAULT_FORGETTING = 0.98
DEFAULT_REFIT_INTERVAL = 5_000
# A refit is due once the basis captures this much less of the energy than when it was fitted.
DEFAULT_ENERGY_DROP = 0.1
# Rounding makes P drift from symmetry by ~eps per update; re-symmetrising this often keeps the
# drift at rounding level for a fraction of the per-update cost.
_SYMMETRISE_EVERY = 64


def forgetting_weights(n_pairs: int, forgetting: float) -> FloatArray:
    """Pair j of n_pairs gets forgetting^(n_pairs - 1 - j): the newest 1, older ones less."""
    return np.asarray(forgetting ** np.arange(n_pairs - 1, -1, -1, dtype=np.float64))


def weighted_operator(
    basis: FloatArray,
    x: FloatArray,
    y: FloatArray,
    forgetting: float,
    weights: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Batch reference: (A, Q) of the weighted least squares in `basis` coordinates.

    Pair j of m gets weight forgetting^(m - 1 - j), or weights[j] when `weights` is given. A is
    (r, r); Q = sum_j w_j z_j z_j^T.
    """
    zx = basis.T @ x
    zy = basis.T @ y
    if weights is None:
        weights = forgetting_weights(x.shape[1], forgetting)
    q = (zx * weights) @ zx.T
    r = (zy * weights) @ zx.T
    a = np.linalg.solve(q.T, r.T).T
    return np.asarray(a, dtype=np.float64), np.asarray(q, dtype=np.float64)


class OnlineDmd:
    """A DMD operator over `concept_ids` kept current one snapshot pair at a time.

    Not thread-safe: the owner serialises updates (the service runs them off the event loop in
    one worker).
    """

    def __init__(
        self,
        basis: ArrayLike,
        concept_ids: Sequence[str],
        dt: float,
        *,
        forgetting: float = DEFAULT_FORGETTING,
        prior: float = 1e-6,
        refit_interval: int = DEFAULT_REFIT_INTERVAL,
        energy_drop: float = DEFAULT_ENERGY_DROP,
    ) -> None:
        """Start with A = 0 and Q = prior * I (forgotten geometrically as pairs arrive).

        A cold start assumes the basis captures all the energy (baseline share 1); prefer
        `from_window`, which measures the share on the fitted window.

        Args:
            basis: (n, r) orthonormal columns, normally DmdModel.basis of the last full fit.
            concept_ids: ids naming the n rows.
            dt: sampling interval in seconds.
            forgetting: rho in (0, 1] (default 0.98: a pair's weight halves after ~34 pairs).
            prior: Q's initial ridge in squared activation units, > 0.
            refit_interval: updates after which `needs_refit` turns true, >= 1.
            energy_drop: fraction in (0, 1): `needs_refit` turns true when the basis captures
                less than (1 - energy_drop) times the energy share it captured at the start.

        Raises:
            ValueError: on a basis that is not (len(concept_ids), r) with orthonormal columns,
                or a parameter outside its range.
        """
        u = as_float_matrix(basis, "basis")
        if u.shape[0] != len(concept_ids):
            raise ValueError(
                f"basis has {u.shape[0]} rows but there are {len(concept_ids)} concept_ids"
            )
        if not np.allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-8):
            raise ValueError("basis columns must be orthonormal; pass DmdModel.basis")
        self._forgetting = require_in_range(forgetting, "forgetting", 1e-12, 1.0)
        self._dt = require_positive(dt, "dt")
        require_positive(prior, "prior")
        self._refit_interval = require_rank(refit_interval, "refit_interval")
        self._energy_drop = require_in_range(energy_drop, "energy_drop", 1e-9, 1.0 - 1e-9)
        self._basis = readonly(np.ascontiguousarray(u))
        self._concept_ids = tuple(concept_ids)
        r = u.shape[1]
        self._a: FloatArray = np.zeros((r, r), order="F")
        self._p: FloatArray = np.asfortranarray(np.eye(r) / prior)
        self._since_symmetric = 0
        self._weight = 0.0
        self._captured = 0.0
        self._total = 0.0
        self._baseline = 1.0
        self._n_updates = 0
        self._since_refit = 0

    @classmethod
    def from_window(
        cls,
        model: DmdModel,
        window: SnapshotWindow,
        *,
        forgetting: float = DEFAULT_FORGETTING,
        refit_interval: int = DEFAULT_REFIT_INTERVAL,
        energy_drop: float = DEFAULT_ENERGY_DROP,
        weighted: bool = True,
    ) -> OnlineDmd:
        """Start exactly where a batch fit of `window` ends.

        With `weighted` the window's pairs carry the forgetting weights (the batch fit used the
        same `forgetting`); without, every window pair weighs 1 (an unweighted batch fit). Either
        way each later pair discounts all earlier ones by `forgetting`.

        Raises:
            ValueError: when the window's concepts differ from the model's.
        """
        if window.concept_ids != model.concept_ids:
            raise ValueError("window.concept_ids differ from the model's; use the fitted window")
        online = cls(
            model.basis,
            model.concept_ids,
            model.dt,
            forgetting=forgetting,
            refit_interval=refit_interval,
            energy_drop=energy_drop,
        )
        x, y = window.pairs()
        weights = forgetting_weights(x.shape[1], forgetting) if weighted else np.ones(x.shape[1])
        a, q = weighted_operator(model.basis, x, y, forgetting, weights)
        online._a = np.asfortranarray(a)
        online._p = np.asfortranarray(np.linalg.inv(q), dtype=np.float64)
        online._weight = float(np.sum(weights))
        online._captured = float(np.sum(weights * np.sum((model.basis.T @ x) ** 2, axis=0)))
        online._total = float(np.sum(weights * np.sum(x**2, axis=0)))
        online._baseline = online.captured_energy
        online._n_updates = x.shape[1]
        return online

    @property
    def concept_ids(self) -> tuple[str, ...]:
        """Ids naming the rows of the basis."""
        return self._concept_ids

    @property
    def basis(self) -> FloatArray:
        """(n, r) basis the operator acts in (read-only)."""
        return self._basis

    @property
    def operator(self) -> FloatArray:
        """(r, r) current reduced operator (a copy)."""
        return np.array(self._a, order="C")

    @property
    def n_updates(self) -> int:
        """Pairs absorbed since construction (including a batch start)."""
        return self._n_updates

    @property
    def captured_energy(self) -> float:
        """Forgetting-weighted share of snapshot energy inside span(basis), in [0, 1]."""
        return self._captured / self._total if self._total > 0 else 1.0

    @property
    def needs_refit(self) -> bool:
        """True after `refit_interval` updates or once the basis lost `energy_drop` of its share."""
        if self._since_refit >= self._refit_interval:
            return True
        return self.captured_energy < (1.0 - self._energy_drop) * self._baseline

    def update(self, x: ArrayLike, y: ArrayLike) -> None:
        """Absorb one pair: `y` is the snapshot one dt after `x`, both (n,) over concept_ids.

        Raises:
            ValueError: on wrong lengths or non-finite values.
        """
        n = len(self._concept_ids)
        xv = as_float_vector(x, "x", n)
        yv = as_float_vector(y, "y", n)
        self._absorb(self._basis.T @ xv, self._basis.T @ yv, float(xv @ xv))

    def update_trace(self, trace: ArrayLike) -> int:
        """Absorb the consecutive pairs of one trace (n, T) in time order; returns T - 1.

        Pairs never join two traces: call this once per trace.
        """
        array = as_float_matrix(trace, "trace")
        if array.shape[0] != len(self._concept_ids):
            raise ValueError(
                f"trace has {array.shape[0]} rows but the tracker has {len(self._concept_ids)}"
                " concepts; give one row per concept in concept_ids order"
            )
        # One GEMM projects the whole trace; rows of z are contiguous for the per-pair updates.
        z = array.T @ self._basis
        energy = np.einsum("it,it->t", array, array)
        for t in range(array.shape[1] - 1):
            self._absorb(z[t], z[t + 1], float(energy[t]))
        return max(int(array.shape[1]) - 1, 0)

    def _absorb(self, zx: FloatArray, zy: FloatArray, energy: float) -> None:
        rho = self._forgetting
        px = self._p @ zx
        gain = px / (rho + float(zx @ px))
        error = zy - self._a @ zx
        # In-place BLAS rank-1 updates (dger) on Fortran-ordered state: a third of the time of
        # np.outer plus +=, which allocate an r x r temporary per update.
        self._a = blas.dger(1.0, error, gain, a=self._a, overwrite_a=True)
        self._p = blas.dger(-1.0, px, gain, a=self._p, overwrite_a=True)
        self._p *= 1.0 / rho
        self._since_symmetric += 1
        if self._since_symmetric >= _SYMMETRISE_EVERY:
            # Sherman-Morrison keeps P symmetric only up to rounding; restore it before the
            # asymmetry can grow through thousands of updates.
            self._p = np.asfortranarray(0.5 * (self._p + self._p.T))
            self._since_symmetric = 0
        self._weight = rho * self._weight + 1.0
        self._captured = rho * self._captured + float(zx @ zx)
        self._total = rho * self._total + energy
        self._n_updates += 1
        self._since_refit += 1

    def eigenvalues(self) -> ComplexArray:
        """Eigenvalues of the current operator (complex, unsorted)."""
        return np.asarray(np.linalg.eigvals(self._a), dtype=np.complex128)

    def to_model(self) -> DmdModel:
        """The current operator as a DmdModel with projected modes U W.

        Amplitudes follow dmd.fit_dmd's definition under the forgetting weights.
        """
        eigenvalues, w = np.linalg.eig(self._a)
        eigenvalues = eigenvalues.astype(np.complex128)
        w = w.astype(np.complex128)
        w /= np.linalg.norm(w, axis=0)
        # Q = sum_j w_j z_j z_j^T is P^-1; it is only needed here, so it is not tracked.
        q = np.linalg.inv(self._p)
        covariance = q / max(self._weight, 1e-300)
        w_inv = np.linalg.inv(w)
        modal = np.real(np.einsum("ij,jk,ik->i", w_inv, covariance, w_inv.conj()))
        amplitudes = np.abs(eigenvalues) * np.sqrt(np.clip(modal, 0.0, None))
        order = mode_order(eigenvalues, amplitudes)
        singular = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (q + q.T))[::-1], 0.0, None))
        return DmdModel(
            concept_ids=self._concept_ids,
            dt=self._dt,
            eigenvalues=readonly(eigenvalues[order]),
            modes=readonly(np.ascontiguousarray((self._basis @ w)[:, order])),
            amplitudes=readonly(np.asarray(amplitudes[order], dtype=np.float64)),
            basis=self._basis,
            singular_values=readonly(singular),
            reduced_operator=readonly(self._a.copy()),
            eigenvectors=readonly(np.ascontiguousarray(w[:, order])),
            n_pairs=self._n_updates,
            n_traces=0,
            svd_method="online",
        )

    def restarted(
        self, model: DmdModel, window: SnapshotWindow, *, weighted: bool = True
    ) -> OnlineDmd:
        """A fresh tracker started from a full refit (`model` of `window`), same settings."""
        return OnlineDmd.from_window(
            model,
            window,
            forgetting=self._forgetting,
            refit_interval=self._refit_interval,
            energy_drop=self._energy_drop,
            weighted=weighted,
        )
