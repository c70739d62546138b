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

import math
from dataclasses import dataclass, replace

from mcp_services.common.config_schema import SparsePrunerConfig
from mcp_services.common.errors import InputError
from mcp_services.sparse_pruner.domain import PruneSettings

# lam = TAU_UNIT * tau * lambda_max; see the module docstring.
TAU_UNIT = 100.0
TAU_MAX = 1.0 / TAU_UNIT


class KnobError(InputError):
    """A knob is out of range; the message names it and says what is allowed."""


def relative_tau(tau: float) -> float:
    """The domain's ``tau`` (a fraction of ``lambda_max``) for the operators' ``tau``."""
    return min(tau * TAU_UNIT, 1.0)


def operator_tau(relative: float) -> float:
    """Inverse of :func:`relative_tau`."""
    return relative / TAU_UNIT


@dataclass(frozen=True)
class Knobs:
    """The knobs in force (config, then UpdateConfig), validated at construction.

    Attributes mirror ``sparse_pruner`` in config/base.yaml; ``max_edges_to_prune`` 0 is no cap.
    """

    tau: float
    l1_threshold: float
    max_quality_drop: float
    auto_tune: bool
    retention_target: float
    max_edges_to_prune: int
    max_backoffs: int
    backup_retention: int
    trigger_on_consolidation: bool
    max_conflict_retries: int

    def __post_init__(self) -> None:
        _check(
            0.0 < self.tau <= TAU_MAX,
            "tau",
            f"in (0, {TAU_MAX}] (units of lambda_max/100)",
            self.tau,
        )
        _check(
            0.0 <= self.l1_threshold < 1.0,
            "l1_threshold",
            "in [0, 1) (fraction of rms(W))",
            self.l1_threshold,
        )
        _check(
            0.0 <= self.max_quality_drop <= 1.0,
            "max_quality_drop",
            "in [0, 1]",
            self.max_quality_drop,
        )
        _check(
            0.0 <= self.retention_target <= 1.0,
            "retention_target",
            "in [0, 1]",
            self.retention_target,
        )
        _check(
            self.max_edges_to_prune >= 0,
            "max_edges_to_prune",
            ">= 0 (0: no cap)",
            self.max_edges_to_prune,
        )
        _check(0 <= self.max_backoffs <= 20, "max_backoffs", "in [0, 20]", self.max_backoffs)
        _check(self.backup_retention >= 1, "backup_retention", ">= 1", self.backup_retention)
        _check(
            self.max_conflict_retries >= 0,
            "max_conflict_retries",
            ">= 0",
            self.max_conflict_retries,
        )
        for name in ("tau", "l1_threshold", "max_quality_drop", "retention_target"):
            _check(math.isfinite(getattr(self, name)), name, "a finite number", getattr(self, name))

    @classmethod
    def from_config(cls, cfg: SparsePrunerConfig) -> Knobs:
        return cls(
            tau=cfg.tau,
            l1_threshold=cfg.l1_threshold,
            max_quality_drop=cfg.max_quality_drop,
            auto_tune=cfg.auto_tune,
            retention_target=cfg.retention_target,
            max_edges_to_prune=cfg.max_edges_to_prune,
            max_backoffs=cfg.max_backoffs,
            backup_retention=cfg.backup_retention,
            trigger_on_consolidation=cfg.trigger_on_consolidation,
            max_conflict_retries=cfg.max_conflict_retries,
        )

    def updated(self, **changes: object) -> Knobs:
        """A copy with ``changes`` applied; raises :class:`KnobError` and changes nothing if bad."""
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise KnobError(f"{sorted(unknown)}: not a pruner knob")
        return replace(self, **changes)  # type: ignore[arg-type]


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
    knobs: Knobs, overrides: RunOverrides | None = None, seed: int = 0
) -> PruneSettings:
    """The domain settings of one run: knobs, then overrides, validated together.

    Raises:
        KnobError: an override is out of range (named).
    """
    o = overrides or RunOverrides()
    effective = knobs.updated(
        **{k: v for k, v in o.__dict__.items() if v is not None},
    )
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


def _check(ok: bool, name: str, expected: str, value: object) -> None:
    if not ok:
        raise KnobError(f"{name}: must be {expected}, got {value!r}")
