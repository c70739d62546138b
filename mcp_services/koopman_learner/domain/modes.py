"""What a fitted model says: mode summaries, forward prediction, and stability.

Each summary carries the physical quantities the service reports (frequency in Hz, growth rate
in 1/s, damping ratio) and the concepts that dominate the mode, with phase shifts measured
against the mode's largest component, so they do not depend on the arbitrary complex scale of a
DMD mode.

**Significance.** Amplitude alone ranks a strongly damped mode (a transient, or a noise mode the
fit spent a pair of eigenvalues on) as high as a cycle that lasts: both can start equally large.
What a reader of "the modes" wants first is what stays. So each mode also gets its *persistence*
over the window, the mean of rho^t for t = 0 .. H - 1 with rho = min(|lambda|, 1 / |lambda|) and H
the horizon in samples (the longest trace in the window): the share of its amplitude the mode
keeps on average, 1 for an undamped mode, about 1 / (H |ln rho|) for a strongly damped one. A
growing mode is treated like a decaying one: over a finite window its size is as unrepresentative.
*significance* = amplitude x persistence, the mode's mean size over the window (activation
units); modes are ranked by it, and a mode is *significant* when its persistence reaches
`min_persistence` (koopman_learner.min_persistence, 0.2: the mode keeps a fifth of its amplitude on
average over the window; the issue's spurious 20.7-year mode decaying at 0.19/yr has 0.02 over a
300-year window, the 10.8-year cycle 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .arrays import FloatArray, as_float_vector, require_rank, wrap_phase
from .dmd import DmdModel


@dataclass(frozen=True)
class DominantConcept:
    """One concept's share of a mode.

    Attributes:
        concept_id: the concept.
        weight: |phi_j| / ||phi||, in (0, 1]; the squares of all weights of a mode sum to 1.
        phase_shift: arg(phi_j) - arg(phi_ref) wrapped to (-pi, pi] (rad), where ref is the
            mode's largest component (its own shift is 0). A concept with shift +pi/2 peaks a
            quarter period *before* the reference concept.
    """

    concept_id: str
    weight: float
    phase_shift: float


@dataclass(frozen=True)
class ModeSummary:
    """A mode in physical units.

    Attributes:
        index: position in the model (0 = largest amplitude).
        eigenvalue: discrete-time lambda.
        frequency_hz: arg(lambda) / (2 pi dt).
        growth_rate: ln|lambda| / dt in 1/s (-inf for lambda = 0).
        damping_ratio: see DmdModel.damping_ratios.
        amplitude: RMS modal amplitude (activation units).
        dominant: the largest components, largest first.
    """

    index: int
    eigenvalue: complex
    frequency_hz: float
    growth_rate: float
    damping_ratio: float
    amplitude: float
    dominant: tuple[DominantConcept, ...]
    persistence: float = 1.0
    significance: float = 0.0
    significant: bool = True

    @property
    def oscillating(self) -> bool:
        """The mode has a period (a non-real eigenvalue)."""
        return self.frequency_hz != 0.0


@dataclass(frozen=True)
class StabilityReport:
    """Which modes grow.

    Attributes:
        stable: no mode has |lambda| > 1 + tolerance.
        unstable_modes: indices of the modes with |lambda| > 1 + tolerance.
        spectral_radius: max |lambda|.
        max_growth_rate: ln(spectral_radius) / dt in 1/s.
    """

    stable: bool
    unstable_modes: tuple[int, ...]
    spectral_radius: float
    max_growth_rate: float


DEFAULT_MIN_PERSISTENCE = 0.2


def persistence(eigenvalues: ArrayLike, horizon: int) -> FloatArray:
    """Mean of rho^t over t = 0 .. horizon - 1, rho = min(|lambda|, 1/|lambda|); in [0, 1].

    1 for |lambda| = 1 (and for any mode when horizon <= 1); see the module docstring.
    """
    lam = np.abs(np.asarray(eigenvalues, dtype=np.complex128))
    with np.errstate(divide="ignore"):
        rho = np.minimum(lam, np.where(lam > 0, 1.0 / np.maximum(lam, 1e-300), 0.0))
    if horizon <= 1:
        return np.ones(lam.shape, dtype=np.float64)
    out = np.ones(lam.shape, dtype=np.float64)
    damped = rho < 1.0 - 1e-12
    r = rho[damped]
    out[damped] = (1.0 - r**horizon) / (horizon * (1.0 - r))
    return out


def describe_modes(
    model: DmdModel,
    *,
    max_modes: int | None = None,
    top_concepts: int = 5,
    horizon: int = 0,
    min_persistence: float = DEFAULT_MIN_PERSISTENCE,
) -> tuple[ModeSummary, ...]:
    """Summaries of the first `max_modes` modes (all by default), in the model's order.

    `horizon` (samples) is what persistence is measured over; 0 or 1 gives every mode
    persistence 1 (significance = amplitude).

    Raises:
        ValueError: when top_concepts < 1 or max_modes < 1.
    """
    require_rank(top_concepts, "top_concepts")
    count = (
        model.rank if max_modes is None else min(require_rank(max_modes, "max_modes"), model.rank)
    )
    frequencies = model.frequencies_hz
    growth = model.growth_rates
    damping = model.damping_ratios
    kept = persistence(model.eigenvalues, horizon)
    summaries: list[ModeSummary] = []
    for index in range(count):
        summaries.append(
            ModeSummary(
                index=index,
                eigenvalue=complex(model.eigenvalues[index]),
                frequency_hz=float(frequencies[index]),
                growth_rate=float(growth[index]),
                damping_ratio=float(damping[index]),
                amplitude=float(model.amplitudes[index]),
                dominant=dominant_concepts(model, index, top_concepts),
                persistence=float(kept[index]),
                significance=float(model.amplitudes[index] * kept[index]),
                significant=bool(kept[index] >= min_persistence),
            )
        )
    return tuple(summaries)


def dominant_concepts(model: DmdModel, index: int, count: int = 5) -> tuple[DominantConcept, ...]:
    """The `count` largest components of mode `index`, with weights and phase shifts."""
    mode = model.modes[:, index]
    magnitude = np.abs(mode)
    norm = float(np.linalg.norm(mode))
    order = np.argsort(magnitude)[::-1][:count]
    reference = float(np.angle(mode[order[0]]))
    shifts = wrap_phase(np.angle(mode[order]) - reference)
    return tuple(
        DominantConcept(
            concept_id=model.concept_ids[j],
            weight=float(magnitude[j] / norm),
            phase_shift=float(shift),
        )
        for j, shift in zip(order, shifts, strict=True)
    )


def predict(model: DmdModel, state: ArrayLike, steps: int) -> FloatArray:
    """Activations for `steps` samples after `state`, from the modes.

    The state is expanded in the modes (least squares), each modal coordinate advanced by
    lambda^t, and the real part returned (a real model's modes come in conjugate pairs).

    Args:
        state: (n,) activations over model.concept_ids at time 0.
        steps: samples to predict, >= 1.

    Returns:
        (n, steps + 1) array; column t is the prediction at time t * dt (column 0 the state's
        projection onto the modes).

    Raises:
        ValueError: on a state of the wrong length or non-finite values, or steps < 1.
    """
    x0 = as_float_vector(state, "state", len(model.concept_ids))
    require_rank(steps, "steps")
    coefficients, *_ = np.linalg.lstsq(model.modes, x0.astype(np.complex128), rcond=None)
    powers = model.eigenvalues[:, None] ** np.arange(steps + 1)[None, :]
    trajectory = model.modes @ (coefficients[:, None] * powers)
    return np.asarray(trajectory.real, dtype=np.float64)


def stability(model: DmdModel, tolerance: float = 1e-9) -> StabilityReport:
    """Modes with |lambda| > 1 + tolerance are unstable (grow without bound)."""
    radius = np.abs(model.eigenvalues)
    unstable = tuple(int(i) for i in np.flatnonzero(radius > 1.0 + tolerance))
    spectral_radius = float(radius.max()) if radius.size else 0.0
    with np.errstate(divide="ignore"):
        max_growth = float(np.log(spectral_radius) / model.dt)
    return StabilityReport(
        stable=not unstable,
        unstable_modes=unstable,
        spectral_radius=spectral_radius,
        max_growth_rate=max_growth,
    )
