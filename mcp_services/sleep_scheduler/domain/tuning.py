"""The operators' tuning rules (DESIGN section 3) as pure functions.

* energy drop < 5% -> raise T0 (the anneal is too cold to explore: samples stay where they start);
* settle loops > 50 -> lower T0 (the anneal is so hot that it wanders before it settles);
* energy delta oscillating across cycles -> halve eta (steps overshoot).

The service reports the advice as metrics and applies it when ``auto_tune`` is on. If both T0
rules fire, lowering wins: a cycle that cannot settle is the more urgent fault.

The rules read the figures of a cycle that had something to learn. A cycle whose episodes held
no structure (no prototype formed or reinforced) or whose graph already recalled them has a
small energy drop by nature, and raising T0 for it would be advice about a cause that is not
there: such a cycle advises nothing and says why (``TuningAdvice.why``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

ENERGY_DROP_MIN = 0.05
SETTLE_LOOPS_MAX = 50
T0_STEP = 1.25
"""Factor by which T0 is raised or lowered: gentle, so a rule needs a few cycles to act."""
T0_BOUNDS = (0.1, 10.0)
ETA_MIN = 1e-5
OSCILLATION_WINDOW = 4
"""Energy deltas considered for oscillation: three sign changes in a row is not noise."""


@dataclass(frozen=True)
class TuningAdvice:
    """What the rules recommend after a cycle; ``reasons`` names each rule that fired."""

    t0: float
    eta: float
    reasons: tuple[str, ...]
    why: str = ""

    @property
    def changed(self) -> bool:
        """True when some rule fired."""
        return bool(self.reasons)


def energy_delta_oscillates(deltas: Sequence[float], window: int = OSCILLATION_WINDOW) -> bool:
    """True when the last ``window`` energy deltas alternate in sign (+ - + - or - + - +).

    Raises:
        ValueError: if ``window`` < 3 (two values cannot show an oscillation).
    """
    if window < 3:
        raise ValueError(f"window={window} must be >= 3")
    recent = list(deltas)[-window:]
    if len(recent) < window or any(d == 0.0 for d in recent):
        return False
    return all((a > 0) != (b > 0) for a, b in itertools.pairwise(recent))


def advise(
    t0: float,
    eta: float,
    energy_drop: float,
    settle_loops: int,
    energy_deltas: Sequence[float] = (),
    learned: bool = True,
    cause: str = "",
) -> TuningAdvice:
    """Apply the tuning table to the last cycle's figures.

    Args:
        t0: relative starting temperature in force (> 0).
        eta: learning rate in force (> 0).
        energy_drop: the last cycle's relative energy drop (CycleStats.energy_drop).
        settle_loops: the last cycle's settle loops (>= 0).
        energy_deltas: energy deltas of recent cycles, oldest first, the last one included.
        learned: whether the cycle had something to learn (CycleStats.learned); when False no
            rule fires and ``why`` carries ``cause`` (e.g. the cycle's "no_structure: ..." note).
        cause: why there was nothing to learn, for ``why``.

    Raises:
        ValueError: if ``t0`` or ``eta`` is not positive or ``settle_loops`` is negative.
    """
    if not t0 > 0.0:
        raise ValueError(f"t0={t0} must be > 0")
    if not eta > 0.0:
        raise ValueError(f"eta={eta} must be > 0")
    if settle_loops < 0:
        raise ValueError(f"settle_loops={settle_loops} must be >= 0")
    if not learned:
        return TuningAdvice(t0, eta, (), cause or "nothing to learn in this cycle: no knob advised")
    reasons: list[str] = []
    new_t0, new_eta = t0, eta
    lo, hi = T0_BOUNDS
    if settle_loops > SETTLE_LOOPS_MAX:
        new_t0 = max(lo, t0 / T0_STEP)
        reasons.append("settle_loops_high:lower_t0")
    elif energy_drop < ENERGY_DROP_MIN:
        new_t0 = min(hi, t0 * T0_STEP)
        reasons.append("energy_drop_low:raise_t0")
    if energy_delta_oscillates(energy_deltas):
        new_eta = max(ETA_MIN, eta / 2.0)
        reasons.append("energy_delta_oscillates:halve_eta")
    return TuningAdvice(new_t0, new_eta, tuple(reasons))
