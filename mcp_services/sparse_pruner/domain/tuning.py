"""Operators' tuning rule for the pruner: a fast-growing graph gets a stronger L1 penalty.

Rule (DESIGN.md, SparsePruner): weekly graph growth above 5% raises ``tau`` by x1.5. Pure
functions, so the service can report the proposal as a metric and apply it only with auto_tune.
"""

from __future__ import annotations

import math

DEFAULT_GROWTH_LIMIT = 0.05
DEFAULT_TAU_FACTOR = 1.5
# tau is a fraction of lambda_max; at 1 every edge is pruned, so no rule may go past it.
TAU_CEILING = 1.0
# exp(700) is about 1e304, still a finite float.
_MAX_EXPONENT = 700.0


def weekly_growth(edges_before: int, edges_now: int, elapsed_days: float) -> float:
    """Relative edge-count growth per week, compounded: ``(now/before)^(7/days) - 1``.

    Raises:
        ValueError: ``edges_before <= 0``, ``edges_now < 0`` or ``elapsed_days <= 0``.
    """
    if edges_before <= 0:
        raise ValueError(f"edges_before: must be > 0 to define growth, got {edges_before}")
    if edges_now < 0:
        raise ValueError(f"edges_now: must be >= 0, got {edges_now}")
    if not elapsed_days > 0.0 or not math.isfinite(elapsed_days):
        raise ValueError(f"elapsed_days: must be a finite number > 0, got {elapsed_days}")
    if edges_now == 0:
        return -1.0
    # In log space, capped: versions seconds apart extrapolate to astronomically large weekly
    # rates, which must stay a finite "far above the limit" rather than overflow.
    exponent = min((7.0 / elapsed_days) * math.log(edges_now / edges_before), _MAX_EXPONENT)
    return float(math.expm1(exponent))


def tuned_tau(
    tau: float,
    growth_per_week: float,
    *,
    growth_limit: float = DEFAULT_GROWTH_LIMIT,
    factor: float = DEFAULT_TAU_FACTOR,
) -> float:
    """Return the ``tau`` the rule proposes: ``min(tau * factor, 1)`` if growth exceeds the limit.

    Args:
        tau: current L1 strength, a fraction of ``lambda_max`` in ``(0, 1]``.
        growth_per_week: relative growth, e.g. 0.08 for 8%/week (see :func:`weekly_growth`).
        growth_limit: growth above which the rule fires (default 0.05).
        factor: multiplier when it fires (default 1.5), ``> 1``.

    Raises:
        ValueError: an argument out of range or not finite.
    """
    if not 0.0 < tau <= TAU_CEILING:
        raise ValueError(f"tau: must be in (0, 1], a fraction of lambda_max, got {tau}")
    if not math.isfinite(growth_per_week) or growth_per_week < -1.0:
        raise ValueError(f"growth_per_week: must be a finite fraction >= -1, got {growth_per_week}")
    if not math.isfinite(growth_limit) or growth_limit < 0.0:
        raise ValueError(f"growth_limit: must be a finite fraction >= 0, got {growth_limit}")
    if not math.isfinite(factor) or factor <= 1.0:
        raise ValueError(f"factor: must be > 1 so the rule raises tau, got {factor}")
    if growth_per_week > growth_limit:
        return min(tau * factor, TAU_CEILING)
    return tau
