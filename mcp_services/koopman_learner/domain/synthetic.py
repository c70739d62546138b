"""Known-answer linear systems for tests, the benchmark and the load generator.

A system is a set of damped oscillations over n concepts: x_t = offset + Re(Phi Lambda^t b),
with conjugate-closed eigenvalues and modes so every snapshot is real. Each oscillation at
frequency f > 0 (Hz) contributes a conjugate pair of eigenvalues exp((g +- 2 pi i f) dt); f = 0
contributes one real eigenvalue exp(g dt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .arrays import ComplexArray, FloatArray, readonly, require_positive, require_rank


@dataclass(frozen=True, eq=False)
class LinearSystem:
    """Ground truth: eigenvalues (p,), unit-norm modes (n, p), sampling interval dt (s)."""

    eigenvalues: ComplexArray
    modes: ComplexArray
    dt: float

    @property
    def n_concepts(self) -> int:
        """Rows of every trace the system makes."""
        return int(self.modes.shape[0])


def oscillator_system(
    n_concepts: int,
    frequencies_hz: Sequence[float],
    growth_rates: Sequence[float],
    dt: float,
    *,
    seed: int,
) -> LinearSystem:
    """A system with one oscillation per (frequency, growth rate) pair, random mode shapes.

    Args:
        n_concepts: rows, >= number of eigenvalues for the modes to be independent.
        frequencies_hz: f >= 0 per oscillation, below the Nyquist limit 1 / (2 dt).
        growth_rates: g per oscillation in 1/s (negative decays).
        dt: sampling interval in seconds.
        seed: seed of the mode shapes.

    Raises:
        ValueError: on mismatched lengths, a frequency outside [0, 1 / (2 dt)), or too few
            concepts.
    """
    require_rank(n_concepts, "n_concepts")
    require_positive(dt, "dt")
    if len(frequencies_hz) != len(growth_rates):
        raise ValueError("frequencies_hz and growth_rates must have the same length")
    rng = np.random.default_rng(seed)
    eigenvalues: list[complex] = []
    columns: list[ComplexArray] = []
    for f, g in zip(frequencies_hz, growth_rates, strict=True):
        if not 0 <= f < 1 / (2 * dt):
            raise ValueError(f"frequency {f} Hz must lie in [0, {1 / (2 * dt)}) for dt={dt}")
        lam = complex(np.exp((g + 2j * np.pi * f) * dt))
        if f == 0:
            phi = rng.standard_normal(n_concepts).astype(np.complex128)
            eigenvalues.append(lam)
            columns.append(phi / np.linalg.norm(phi))
        else:
            phi = rng.standard_normal(n_concepts) + 1j * rng.standard_normal(n_concepts)
            phi /= np.linalg.norm(phi)
            eigenvalues.extend([lam, lam.conjugate()])
            columns.extend([phi, phi.conj()])
    if len(eigenvalues) > n_concepts:
        raise ValueError(
            f"{len(eigenvalues)} eigenvalues need n_concepts >= {len(eigenvalues)},"
            f" got {n_concepts}"
        )
    return LinearSystem(
        eigenvalues=readonly(np.asarray(eigenvalues, dtype=np.complex128)),
        modes=readonly(np.stack(columns, axis=1)),
        dt=float(dt),
    )


def simulate(
    system: LinearSystem,
    *,
    n_traces: int,
    length: int,
    seed: int,
    noise: float = 0.0,
    offset: float = 0.0,
    amplitudes: Sequence[float] | None = None,
) -> list[FloatArray]:
    """`n_traces` traces of `length` snapshots from random initial phases.

    Args:
        n_traces, length: shape of the data, each >= 1.
        seed: seed of the initial conditions and the noise.
        noise: standard deviation of white measurement noise added to every entry.
        offset: constant added to every entry (shifts activations into 0..1).
        amplitudes: |b| per oscillation (default 1 for all); phases are drawn uniformly.
    """
    require_rank(n_traces, "n_traces")
    require_rank(length, "length")
    rng = np.random.default_rng(seed)
    lam = system.eigenvalues
    # Oscillations are the conjugate pairs plus real eigenvalues; give each its magnitude.
    pair_of: list[int] = []
    k = 0
    index = 0
    while index < lam.shape[0]:
        real = abs(lam[index].imag) == 0
        pair_of.extend([k] if real else [k, k])
        index += 1 if real else 2
        k += 1
    magnitude = np.ones(k) if amplitudes is None else np.asarray(amplitudes, dtype=np.float64)
    if magnitude.shape[0] != k:
        raise ValueError(f"amplitudes must have one entry per oscillation ({k})")
    powers = lam[:, None] ** np.arange(length)[None, :]
    traces: list[FloatArray] = []
    for _ in range(n_traces):
        b = np.empty(lam.shape[0], dtype=np.complex128)
        index = 0
        while index < lam.shape[0]:
            m = magnitude[pair_of[index]]
            if lam[index].imag == 0:
                b[index] = m * rng.choice([-1.0, 1.0])
                index += 1
            else:
                b[index] = m * np.exp(2j * np.pi * rng.random())
                b[index + 1] = b[index].conjugate()
                index += 2
        clean = (system.modes @ (b[:, None] * powers)).real + offset
        traces.append(clean + noise * rng.standard_normal(clean.shape))
    return traces
