"""The scheduler's section of the configuration (``sleep_scheduler``), registered with the loader.

The fields marked ``Live`` are the ones a config reload applies while the scheduler runs (the
consolidator's knobs, the version count, the pressure poll and the schedule).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from mcp_services.common.config_schema import Live, PositiveFloat, StrictModel, register_section


class SleepSchedulerConfig(StrictModel):
    t0: Annotated[PositiveFloat, Live] = 2.0
    eta: Annotated[PositiveFloat, Live] = 0.01
    auto_tune: Annotated[bool, Live] = False
    pressure_threshold: Annotated[int, Field(ge=0), Live] = 1000
    # Where graph versions are kept (empty: <paths.var_dir>/graphs), and how many versions.
    graph_dir: str = ""
    keep_versions: Annotated[int, Field(ge=1), Live] = 10
    # The annealing schedule: sleep epochs cool from t0 to t_min by temperature_decay each; the
    # settle-loop anneal cools by anneal_decay per sweep; at most max_epochs epochs per cycle.
    t_min: Annotated[PositiveFloat, Live] = 0.3
    temperature_decay: Annotated[float, Field(gt=0, lt=1), Live] = 0.9
    anneal_decay: Annotated[float, Field(gt=0, lt=1), Live] = 0.85
    max_epochs: Annotated[int, Field(ge=1), Live] = 400
    # Episodes one cycle takes at most (oldest first).
    max_episodes: Annotated[int, Field(ge=1), Live] = 100_000
    # Weight factor per cycle of a rehearsed prototype no new episode joined (1: never fades);
    # below the support a prototype needs it is dropped (sleep_scheduler/domain/fading.py).
    fade: Annotated[float, Field(ge=0, le=1), Live] = 0.9
    # The cross-replica consolidation lease in Redis expires this long after its holder stops
    # renewing it (renewed every third of it).
    lease_ttl_s: Annotated[float, Field(ge=1)] = 30.0
    # Vault pressure is re-checked from the vault this often, so a lost episode.stored event
    # only delays a cycle (0: only events).
    pressure_poll_s: Annotated[float, Field(ge=0), Live] = 30.0
    # A recurring consolidation: a 5-field cron expression (UTC) or an interval (0: none).
    schedule_cron: Annotated[str, Live] = ""
    schedule_every_s: Annotated[float, Field(ge=0), Live] = 0.0
    # CommitGraph streams (the pruner's commits): a graph is held in memory until its stream
    # ends, so bytes per stream and streams open at once are capped (RESOURCE_EXHAUSTED beyond).
    max_stream_bytes: Annotated[int, Field(ge=1024)] = 1 << 30
    max_concurrent_streams: Annotated[int, Field(ge=1, le=1024)] = 4
    # Deadline of the vault Scan a cycle reads its episodes with (up to max_episodes of them);
    # beyond it the cycle fails naming this key instead of waiting on a stalled vault forever.
    vault_scan_timeout_s: PositiveFloat = 300.0

    @model_validator(mode="after")
    def _temperatures(self) -> SleepSchedulerConfig:
        if self.t_min > self.t0:
            raise ValueError(f"t_min ({self.t_min}) must be <= t0 ({self.t0})")
        if self.schedule_cron and self.schedule_every_s:
            raise ValueError("set schedule_cron or schedule_every_s, not both")
        return self


register_section("sleep_scheduler", SleepSchedulerConfig, service="sleep_scheduler")
