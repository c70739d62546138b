"""The pruner's knobs as operators set them, and their translation into a domain run.

Scales (the issue demands that the guide's defaults keep a meaning; DESIGN.md section 3):

* ``tau`` is the L1 strength in units of ``lambda_max / 100``: ``lam = 100 * tau * lambda_max``,
  where ``lambda_max`` is the smallest strength at which the certified L1 optimum prunes every
  edge of the graph being pruned. ``lambda_max`` grows linearly with the weights, so ``tau`` means
  the same on a young graph and on one whose weights grew tenfold. The guide's default 0.001 is
  ``0.1 lambda_max``: the operating point measured on planted-pattern graphs (85% of edges pruned
  at alpha 0.1 with recall 1.0, a certified solve in seconds at 100k edges). The domain's own
  ``tau`` (a plain fraction of ``lambda_max``) would make 0.001 the near-LP regime, valid but two
  orders of magnitude slower (274 s at N = 200), which is why the unit is not ``lambda_max``
  itself. ``tau = 0.01`` prunes every edge by L1 (the guard then backs it off); the tuning rule
  raises ``tau`` by x1.5 up to that ceiling.
* ``l1_threshold`` (``PRUNE_L1_THRESHOLD``, default 0.01) is a fraction of the RMS of the graph's
  nonzero weights: after the L1 solve an edge with ``|w| < 0.01 * rms(W)`` is numerically zero
  and dropped. An absolute 0.001 would be below one Hebbian step on one graph and above every
  weight on another.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcp_services.common.config_schema import SettingError, live_fields, updated
from mcp_services.sparse_pruner.domain import PruneSettings
from mcp_services.sparse_pruner.settings import SparsePrunerConfig

# lam = TAU_UNIT * tau * lambda_max; see the module docstring.
TAU_UNIT = 100.0
TAU_MAX = 1.0 / TAU_UNIT


class KnobError(SettingError):
    """A knob is out of range; the message names it and says what is allowed."""


def relative_tau(tau: float) -> float:
    """The domain's ``tau`` (a fraction of ``lambda_max``) for the operators' ``tau``."""
    return min(tau * TAU_UNIT, 1.0)


def operator_tau(relative: float) -> float:
    """Inverse of :func:`relative_tau`."""
    return relative / TAU_UNIT


# The knobs in force are the section itself (settings.SparsePrunerConfig). A run's overrides,
# UpdateConfig, a config reload and auto-tune change these of its fields by name: every field
# declared Live but the schedule's two, which the Schedule holds.
SCHEDULE_FIELDS = ("schedule_interval_s", "schedule_dry_run")
KNOBS = tuple(name for name in live_fields(SparsePrunerConfig) if name not in SCHEDULE_FIELDS)


def with_knobs(knobs: SparsePrunerConfig, **changes: object) -> SparsePrunerConfig:
    """A copy with ``changes`` applied, checked by the section's model ("tau: must be in
    (0, 0.01] (units of lambda_max/100), got 0.02"); raises :class:`KnobError` and changes
    nothing if one is bad."""
    return updated(knobs, changes, KNOBS, "pruner knob", KnobError)


@dataclass(frozen=True)
class RunOverrides:
    """Per-run overrides (TriggerPruning / PreviewPruning options); ``None`` keeps the knob."""

    tau: float | None = None
    l1_threshold: float | None = None
    max_quality_drop: float | None = None
    retention_target: float | None = None
    max_edges_to_prune: int | None = None
    max_backoffs: int | None = None


def run_settings(
    knobs: SparsePrunerConfig, overrides: RunOverrides | None = None, seed: int = 0
) -> PruneSettings:
    """The domain settings of one run: knobs, then overrides, validated together.

    Raises:
        KnobError: an override is out of range (named).
    """
    o = overrides or RunOverrides()
    effective = with_knobs(knobs, **{k: v for k, v in o.__dict__.items() if v is not None})
    cap = effective.max_edges_to_prune
    try:
        return PruneSettings(
            tau=relative_tau(effective.tau),
            l1_threshold=effective.l1_threshold,
            max_quality_drop=effective.max_quality_drop,
            retention_target=effective.retention_target,
            max_edges_to_prune=cap if cap > 0 else None,
            max_backoffs=effective.max_backoffs,
            seed=seed,
        )
    except ValueError as exc:  # the domain's own validation, same wording
        raise KnobError(str(exc)) from None
