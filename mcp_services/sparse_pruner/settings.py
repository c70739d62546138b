"""The pruner's section of the configuration (``sparse_pruner``), registered with the loader.

The fields marked ``Live`` are the ones a config reload applies while the pruner runs; all but
the schedule's two are the knobs in force (sparse_pruner/domain/knobs.py).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mcp_services.common.config_schema import Live, PositiveFloat, StrictModel, register_section


class SparsePrunerConfig(StrictModel):
    # L1 strength in units of lambda_max / 100 (lam = 100 * tau * lambda_max): the guide's 0.001
    # is 0.1 lambda_max, and 0.01 already prunes every edge by L1. See
    # sparse_pruner/domain/knobs.py.
    tau: Annotated[float, Field(gt=0, le=0.01, description="units of lambda_max/100"), Live] = 0.001
    # Edges below this fraction of the RMS nonzero weight are dropped after the L1 solve.
    l1_threshold: Annotated[float, Field(ge=0, lt=1, description="fraction of rms(W)"), Live] = 0.01
    max_quality_drop: Annotated[float, Field(ge=0, le=1), Live] = 0.05
    auto_tune: Annotated[bool, Live] = False
    # One run keeps at least this fraction of the edges and removes at most this many (0: no cap).
    retention_target: Annotated[float, Field(ge=0, le=1), Live] = 0.1
    max_edges_to_prune: Annotated[int, Field(ge=0, description="0: no cap"), Live] = 0
    # Times the guard halves tau before refusing.
    max_backoffs: Annotated[int, Field(ge=0, le=20), Live] = 6
    # Backups of replaced versions kept (empty backup_dir: <paths.var_dir>/pruner/backups).
    backup_dir: str = ""
    backup_retention: Annotated[int, Field(ge=1), Live] = 10
    # Triggers: every consolidation.completed event, and a schedule (0: off).
    trigger_on_consolidation: Annotated[bool, Live] = True
    schedule_interval_s: Annotated[float, Field(ge=0), Live] = 0.0
    schedule_dry_run: Annotated[bool, Live] = False
    # Re-read and recompute this many times on a version conflict before the job fails.
    max_conflict_retries: Annotated[int, Field(ge=0), Live] = 3
    # Deadline of each call to the SleepScheduler.
    scheduler_timeout_s: PositiveFloat = 60.0
    # Weekly growth needs versions at least this far apart; the rule fires at most once per
    # cooldown (the operators' rule is weekly).
    growth_min_window_s: Annotated[float, Field(ge=0)] = 86_400.0
    auto_tune_cooldown_s: Annotated[float, Field(ge=0)] = 604_800.0


register_section("sparse_pruner", SparsePrunerConfig, service="sparse_pruner")
