"""psi-drift: how far the dominant modes moved between two successive fits, in radians.

A DMD mode is defined only up to a complex scale, so modes are compared as complex *lines*:
the drift of a mode is the Fubini-Study angle

    theta = arccos |<phi_prev, phi_cur>| / (||phi_prev|| ||phi_cur||),   in [0, pi/2],

which is the distance between the two modes after the best common phase and unit norm have been
applied (dividing each by the phase of its largest component is the same normalisation, but the
reference component can switch between fits when two components are close; the angle cannot).
For small changes theta is the weight-averaged RMS of the concepts' wrapped phase changes (and
relative magnitude changes) after that common phase is removed, which is what `phase_change`
reports separately. Modes are matched by eigenvalue (Hungarian assignment on |lambda - lambda'|);
a dominant mode with no counterpart within `eigenvalue_gate` counts as fully moved (pi/2).
psi-drift is the amplitude-weighted mean angle over the previous fit's dominant modes.

What 0.2 rad means: cos(0.2)^2 = 0.96, so about 4% of each dominant mode's energy has rotated
onto concepts or phase relations it did not have before; for a pure phase change it is an RMS
shift of 0.2 rad (11 degrees, 3% of a period) across the mode's concepts. On stationary data
the baseline is set by estimation noise: in tests/koopman_learner/test_drift.py (40 concepts,
8 oscillations, noise 0.03 per entry, 300-snapshot windows) it is 0.024-0.027 rad, a tenth of
the threshold; fitting those 16 eigenvalues at rank 8 gives 0.29-0.62 rad, and new mode shapes
about 1.4 rad. Calibrate a deployment with `drift_series` on a stationary stretch: the baseline
shrinks with longer windows and less noise, so keep the threshold several times above it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from .arrays import ComplexArray, FloatArray, require_positive, require_rank, wrap_phase
from .dmd import DEFAULT_RANK, DmdModel

DEFAULT_THRESHOLD = 0.2
DEFAULT_RANK_HIGH = 75
DEFAULT_DOMINANT = 10
DEFAULT_EIGENVALUE_GATE = 0.1


@dataclass(frozen=True)
class ModeMatch:
    """One dominant mode of the previous fit and its counterpart in the current one.

    Attributes:
        previous_index: mode index in the previous model.
        current_index: matched index in the current model, None when nothing lies in the gate.
        eigenvalue_distance: |lambda_prev - lambda_cur| (inf when unmatched).
        angle: Fubini-Study angle in [0, pi/2] rad (pi/2 when unmatched).
        phase_change: |phi|^2-weighted RMS of the wrapped component phase changes after the
            best common phase is removed, rad (pi/2 when unmatched).
        weight: share of psi-drift, the mode's amplitude over the dominant modes' total.
    """

    previous_index: int
    current_index: int | None
    eigenvalue_distance: float
    angle: float
    phase_change: float
    weight: float


@dataclass(frozen=True)
class DriftReport:
    """psi-drift between two fits.

    Attributes:
        psi_drift: amplitude-weighted mean angle of the dominant modes, rad, in [0, pi/2].
        max_angle: largest angle among them, rad.
        matches: per dominant mode, largest amplitude first.
    """

    psi_drift: float
    max_angle: float
    matches: tuple[ModeMatch, ...]


@dataclass(frozen=True)
class RankDecision:
    """The rank for the next fit and why."""

    rank: int
    raised: bool
    psi_drift: float
    threshold: float


@dataclass(frozen=True)
class RankPolicy:
    """Raise the rank to `high_rank` when psi-drift exceeds `threshold` (rad).

    The raise is sticky: a calm fit does not lower the rank again, since a rank that was too low
    to represent the dynamics stays too low; an operator lowers it by configuration.
    """

    base_rank: int = DEFAULT_RANK
    high_rank: int = DEFAULT_RANK_HIGH
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        require_rank(self.base_rank, "base_rank")
        require_rank(self.high_rank, "high_rank")
        require_positive(self.threshold, "threshold")
        if self.high_rank < self.base_rank:
            raise ValueError(
                f"high_rank ({self.high_rank}) must be >= base_rank ({self.base_rank})"
            )

    def next_rank(self, current_rank: int, psi_drift: float) -> RankDecision:
        """Rank for the next fit after a fit at `current_rank` showed `psi_drift`."""
        require_rank(current_rank, "current_rank")
        raised = psi_drift > self.threshold and current_rank < self.high_rank
        rank = self.high_rank if raised else current_rank
        return RankDecision(rank, raised, float(psi_drift), self.threshold)


def psi_drift(
    previous: DmdModel,
    current: DmdModel,
    *,
    n_dominant: int = DEFAULT_DOMINANT,
    eigenvalue_gate: float = DEFAULT_EIGENVALUE_GATE,
) -> DriftReport:
    """Drift of `previous`'s `n_dominant` largest modes into `current`.

    Concepts are aligned by id; a concept present in only one fit counts as 0 in the other.

    Raises:
        ValueError: when the fits have different dt, or on n_dominant < 1 / eigenvalue_gate <= 0.
    """
    require_rank(n_dominant, "n_dominant")
    require_positive(eigenvalue_gate, "eigenvalue_gate")
    if not np.isclose(previous.dt, current.dt, rtol=1e-12):
        raise ValueError(
            f"fits have different dt ({previous.dt} vs {current.dt}); refit with one dt"
        )
    count = min(n_dominant, previous.rank)
    prev_modes, cur_modes = _aligned_modes(previous, current)
    distance = np.abs(previous.eigenvalues[:count, None] - current.eigenvalues[None, :])
    rows, cols = scipy.optimize.linear_sum_assignment(distance)
    partner = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    amplitude = previous.amplitudes[:count]
    total = float(np.sum(amplitude))
    weights = amplitude / total if total > 0 else np.full(count, 1.0 / count)
    matches: list[ModeMatch] = []
    for i in range(count):
        j = partner.get(i)
        gap = float(distance[i, j]) if j is not None else float("inf")
        if j is None or gap > eigenvalue_gate:
            matches.append(ModeMatch(i, None, gap, np.pi / 2, np.pi / 2, float(weights[i])))
            continue
        angle, phase = mode_angle(prev_modes[:, i], cur_modes[:, j])
        matches.append(ModeMatch(i, int(j), gap, angle, phase, float(weights[i])))
    angles = np.asarray([m.angle for m in matches])
    return DriftReport(
        psi_drift=float(np.sum(angles * weights)),
        max_angle=float(angles.max()),
        matches=tuple(matches),
    )


def mode_angle(previous: ComplexArray, current: ComplexArray) -> tuple[float, float]:
    """(Fubini-Study angle, weighted RMS wrapped phase change) between two modes, rad.

    Both are invariant to multiplying either mode by any non-zero complex number.
    """
    a = previous / np.linalg.norm(previous)
    b = current / np.linalg.norm(current)
    overlap = np.vdot(a, b)
    angle = float(np.arccos(min(1.0, float(np.abs(overlap)))))
    # Remove the best common phase, then compare component phases where the mode has weight.
    aligned = b * np.exp(-1j * np.angle(overlap))
    weight = np.abs(a) ** 2
    change = wrap_phase(np.angle(aligned) - np.angle(a))
    phase = float(np.sqrt(np.sum(weight * change**2) / np.sum(weight)))
    return angle, phase


def drift_series(
    models: Sequence[DmdModel],
    *,
    n_dominant: int = DEFAULT_DOMINANT,
    eigenvalue_gate: float = DEFAULT_EIGENVALUE_GATE,
) -> FloatArray:
    """psi-drift between each pair of successive fits (length len(models) - 1), rad.

    Fit successive windows of a stationary stretch and take e.g. the 95th percentile as the
    deployment's baseline.
    """
    values = [
        psi_drift(a, b, n_dominant=n_dominant, eigenvalue_gate=eigenvalue_gate).psi_drift
        for a, b in itertools.pairwise(models)
    ]
    return np.asarray(values, dtype=np.float64)


def _aligned_modes(previous: DmdModel, current: DmdModel) -> tuple[ComplexArray, ComplexArray]:
    if previous.concept_ids == current.concept_ids:
        return previous.modes, current.modes
    union = list(dict.fromkeys(previous.concept_ids + current.concept_ids))
    row = {cid: k for k, cid in enumerate(union)}
    out = []
    for model in (previous, current):
        modes = np.zeros((len(union), model.rank), dtype=np.complex128)
        modes[[row[c] for c in model.concept_ids]] = model.modes
        out.append(modes)
    return out[0], out[1]
