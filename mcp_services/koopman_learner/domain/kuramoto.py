"""Kuramoto phase oscillators: the model the coupling estimator assumes, and a simulator for it.

    dtheta_i/dt = omega_i + sum_j K[i, j] sin(theta_j - theta_i) + sigma * dW_i/dt

K[i, j] is the pull of oscillator j on oscillator i (row = target, column = source), in rad/s;
omega in rad/s; sigma (rad / sqrt(s)) the strength of optional white phase noise. The simulator
is used by the tests and the benchmark (known-answer networks) and by the service to roll phases
forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .arrays import (
    FloatArray,
    as_float_matrix,
    as_float_vector,
    readonly,
    require_positive,
    require_rank,
)


def coupling_drift(theta: FloatArray, couplings: FloatArray) -> FloatArray:
    """sum_j K[i, j] sin(theta_j - theta_i) for every i, in O(N^2) via two matrix products.

    `theta` may be (N,) or (N, T) (one column per time).
    """
    sin, cos = np.sin(theta), np.cos(theta)
    # sin(a - b) = sin a cos b - cos a sin b, so the double sum needs only K @ sin and K @ cos.
    return np.asarray(cos * (couplings @ sin) - sin * (couplings @ cos), dtype=np.float64)


def simulate(
    couplings: ArrayLike,
    omega: ArrayLike,
    theta0: ArrayLike,
    *,
    dt: float,
    steps: int,
    noise: float = 0.0,
    substeps: int = 10,
    seed: int = 0,
) -> FloatArray:
    """Phases (N, steps + 1) sampled every `dt` s from `theta0`, unwrapped (continuous).

    Integrates with the stochastic Heun scheme at dt / substeps (second order without noise).

    Raises:
        ValueError: on mismatched shapes, dt <= 0, steps or substeps < 1, noise < 0.
    """
    k = as_float_matrix(couplings, "couplings")
    n = k.shape[0]
    if k.shape != (n, n):
        raise ValueError(f"couplings must be square, got {k.shape}")
    w = as_float_vector(omega, "omega", n)
    theta = as_float_vector(theta0, "theta0", n).copy()
    require_positive(dt, "dt")
    require_rank(steps, "steps")
    require_rank(substeps, "substeps")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    h = dt / substeps
    out = np.empty((n, steps + 1))
    out[:, 0] = theta
    for step in range(1, steps + 1):
        for _ in range(substeps):
            kick = noise * np.sqrt(h) * rng.standard_normal(n)
            f0 = w + coupling_drift(theta, k)
            guess = theta + h * f0 + kick
            f1 = w + coupling_drift(guess, k)
            theta = theta + 0.5 * h * (f0 + f1) + kick
        out[:, step] = theta
    return out


@dataclass(frozen=True, eq=False)
class Network:
    """A known-answer oscillator network: couplings (N, N) and natural frequencies (N,) rad/s."""

    couplings: FloatArray
    omega: FloatArray


def random_network(
    n: int,
    *,
    mean_in_degree: float,
    coupling_range: tuple[float, float],
    omega_range: tuple[float, float],
    seed: int,
) -> Network:
    """Directed Erdos-Renyi couplings (no self-links) with uniform weights and frequencies.

    Raises:
        ValueError: on n < 2 or a mean in-degree outside (0, n - 1].
    """
    require_rank(n, "n")
    if n < 2 or not 0 < mean_in_degree <= n - 1:
        raise ValueError(f"need n >= 2 and 0 < mean_in_degree <= n - 1, got {n}, {mean_in_degree}")
    rng = np.random.default_rng(seed)
    mask = rng.random((n, n)) < mean_in_degree / (n - 1)
    np.fill_diagonal(mask, False)
    weights = rng.uniform(*coupling_range, size=(n, n))
    couplings = np.where(mask, weights, 0.0)
    omega = rng.uniform(*omega_range, size=n)
    return Network(couplings=readonly(couplings), omega=readonly(omega))
