"""SparsePruner server: `python -m mcp_services.sparse_pruner.server` (gRPC 50053, metrics 9093).

Wires the engine (jobs, backups, tuning) to the SleepScheduler client, the servicer, the
schedule and the consolidation-event trigger. Backups live under ``sparse_pruner.backup_dir``
(default ``<paths.var_dir>/pruner/backups``). The knobs and the schedule follow config reloads
live (``live_settings``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import Settings, live_fields
from mcp_services.common.event_bus import CONSOLIDATION_COMPLETED
from mcp_services.common.namespaces import add_scoped_servicer
from mcp_services.common.reload import Change, section_changes
from mcp_services.common.server import Context, run
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc
from mcp_services.sparse_pruner.adapters.backups import BackupStore
from mcp_services.sparse_pruner.adapters.scheduler_client import SchedulerClient
from mcp_services.sparse_pruner.domain.knobs import KNOBS, KnobError, with_knobs
from mcp_services.sparse_pruner.domain.ports import GraphSource
from mcp_services.sparse_pruner.engine import PruningEngine
from mcp_services.sparse_pruner.metrics import PrunerMetrics
from mcp_services.sparse_pruner.namespaces import ConsolidationRouter, PrunerUnit, pruner_units
from mcp_services.sparse_pruner.rpc.servicer import SparsePrunerServicer
from mcp_services.sparse_pruner.schedule import ConsolidationTrigger, Schedule
from mcp_services.sparse_pruner.settings import SparsePrunerConfig

SERVICE_NAME = pruner_pb2.DESCRIPTOR.services_by_name["SparsePruner"].full_name
# The keys a reload applies: the fields declared Live on SparsePrunerConfig (settings.py), the
# knobs in force (knobs.KNOBS, set as by UpdateConfig) and the schedule's.
LIVE = live_fields(SparsePrunerConfig)


def backup_root(settings: Settings) -> Path:
    cfg = settings.sparse_pruner
    # Relative paths are relative to the project, as for every data path (resolve_path).
    return resolve_path(cfg.backup_dir or Path(settings.paths.var_dir) / "pruner" / "backups")


class SparsePrunerService:
    """The pruner; ``client`` is the default namespace's graph source (None: the scheduler's
    gRPC client; tests may pass one that holds a commit, to force an interleaving)."""

    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context, client: GraphSource | None = None) -> None:
        settings = ctx.settings
        cfg = settings.sparse_pruner
        self._bus = ctx.bus
        self.client = client or SchedulerClient.of(
            ClientFactory.of(settings), cfg.scheduler_timeout_s
        )
        self.engine = PruningEngine(
            cfg,
            self.client,
            BackupStore(backup_root(settings), cfg.backup_retention),
            PrunerMetrics(ctx.registry),
            ctx.bus,
            growth_min_window_s=cfg.growth_min_window_s,
            auto_tune_cooldown_s=cfg.auto_tune_cooldown_s,
        )
        self.schedule = Schedule(
            self.engine, cfg.schedule_interval_s, cfg.schedule_dry_run, ctx.tasks
        )
        self.trigger = ConsolidationTrigger(self.engine, ctx.tasks)
        # One pruner per namespace, each over its namespace's graph; the default is this one.
        servicer = SparsePrunerServicer(self.engine, self.schedule)
        default = PrunerUnit(self.client, self.engine, self.schedule, servicer, self.trigger)
        self._units = pruner_units(settings, backup_root(settings), default, ctx.tasks)
        self._router = ConsolidationRouter(self._units)

    def register(self, server: grpc.aio.Server) -> None:
        add_scoped_servicer(
            pruner_pb2_grpc.add_SparsePrunerServicer_to_server,
            self._units.servicer(),
            server,
            self._units.prepare,
        )

    async def start(self) -> None:
        self.schedule.start()
        self._bus.subscribe([CONSOLIDATION_COMPLETED], self._router.on_event)

    async def stop(self) -> None:
        await self._units.close()
        await self.schedule.stop()
        await self.trigger.stop()
        await self.engine.close()
        await self.client.close()

    # -- config reload (common/reload.py) -------------------------------------------------------

    def live_settings(self) -> dict[str, Callable[[], object]]:
        """The keys declared Live on SparsePrunerConfig, each read where it is in force.

        Not live: backup_dir and scheduler_timeout_s (the open store and client), and the
        auto-tune windows growth_min_window_s and auto_tune_cooldown_s (fixed in the engine).
        """

        def knob(name: str) -> Callable[[], object]:
            return lambda: getattr(self.engine.knobs, name)

        schedule: dict[str, Callable[[], object]] = {
            "schedule_interval_s": lambda: self.schedule.interval_s,
            "schedule_dry_run": lambda: self.schedule.dry_run,
        }
        return {f"sparse_pruner.{n}": schedule.get(n) or knob(n) for n in LIVE}

    async def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        """Config reload: the changed knobs take effect together; one out of range refuses all."""
        changed = section_changes(changes, "sparse_pruner")
        try:
            knobs = with_knobs(
                self.engine.knobs, **{k: v for k, v in changed.items() if k in KNOBS}
            )
        except KnobError as exc:
            raise ValueError(f"sparse_pruner.{exc}") from None
        self.engine.set_knobs(knobs)
        if {"schedule_interval_s", "schedule_dry_run"} & changed.keys():
            # The key not edited keeps its running value (which SchedulePruning may have set).
            self.schedule.set(
                changed.get("schedule_interval_s", self.schedule.interval_s),
                changed.get("schedule_dry_run", self.schedule.dry_run),
            )


def main() -> None:
    sys.exit(run("sparse-pruner", "sparse_pruner", SparsePrunerService))


if __name__ == "__main__":
    main()
