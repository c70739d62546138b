"""SleepScheduler server:
`python -m mcp_services.sleep_scheduler.server` (gRPC 50052, metrics 9092).

Wiring only. The service owns the versioned concept graph (adapters/graph_store.py, served by
rpc/graph_servicer.py) and consolidates the vault's episodes (adapters/vault_client.py) into it
(consolidator.py running cycle.py over domain/, served by rpc/jobs_servicer.py; one replica at a
time by adapters/lease.py). A cycle is started by an RPC, the trigger command (trigger.py), vault
pressure or the recurring schedule (schedule.py). "Scheduler" is this service; its recurring
consolidations are its Schedule.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import structlog

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import Settings, live_fields
from mcp_services.common.namespaces import DEFAULT, NamespaceUnits, add_scoped_servicer
from mcp_services.common.reload import Change, section_changes
from mcp_services.common.server import Context, StartupError, run
from mcp_services.common.stream_limits import StreamLimits
from mcp_services.gen.tori.sleep.v1 import sleep_pb2_grpc
from mcp_services.sleep_scheduler.adapters.graph_store import GraphStore
from mcp_services.sleep_scheduler.adapters.lease import Lease
from mcp_services.sleep_scheduler.adapters.vault_client import VaultClient
from mcp_services.sleep_scheduler.consolidator import Consolidator
from mcp_services.sleep_scheduler.metrics import SleepMetrics
from mcp_services.sleep_scheduler.namespaces import SchedulerUnit, scheduler_units
from mcp_services.sleep_scheduler.ports import EpisodeSource, Selection
from mcp_services.sleep_scheduler.rpc.graph_servicer import GraphRpcs
from mcp_services.sleep_scheduler.rpc.jobs_servicer import JobRpcs
from mcp_services.sleep_scheduler.rpc.servicer import SERVICE_NAME, SleepSchedulerServicer
from mcp_services.sleep_scheduler.schedule import PressureWatcher, Schedule, ScheduleSpec
from mcp_services.sleep_scheduler.settings import SleepSchedulerConfig

log = structlog.get_logger(__name__)

# The keys a reload applies (declared Live in settings.py): the consolidator's knobs, read at the
# next cycle, and these, which live elsewhere (each read where it is in force: live_settings).
LIVE = live_fields(SleepSchedulerConfig)
_ELSEWHERE = ("keep_versions", "pressure_poll_s", "schedule_cron", "schedule_every_s")
LIVE_KNOBS = tuple(name for name in LIVE if name not in _ELSEWHERE)


def graph_dir(settings: Settings) -> Path:
    """Where the graph versions live: sleep_scheduler.graph_dir, else <var_dir>/graphs."""
    cfg = settings.sleep_scheduler
    # Relative paths are relative to the project, as for every data path (resolve_path).
    return resolve_path(cfg.graph_dir or Path(settings.paths.var_dir) / "graphs")


class SleepSchedulerService:
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context, vault: EpisodeSource | None = None) -> None:
        """``vault``: the default namespace's episode source (None: the vault's gRPC client;
        tests may pass one that holds a call, to force an interleaving)."""
        self._ctx = ctx
        self._cfg = ctx.settings.sleep_scheduler
        # Graph reads/commits and completions; the cycle's numerics get their own thread so a
        # long cycle never delays a ReadGraph or a Complete.
        self._io = ThreadPoolExecutor(2, thread_name_prefix="sleep-graph")
        self._numerics = ThreadPoolExecutor(1, thread_name_prefix="sleep-cycle")
        try:
            self._store = GraphStore(graph_dir(ctx.settings), self._cfg.keep_versions)
        except OSError as exc:
            raise StartupError(f"sleep-scheduler: cannot open the graph directory: {exc}") from exc
        self._metrics = SleepMetrics(ctx.registry)
        self._units: NamespaceUnits[SchedulerUnit] | None = None
        self._vault = vault or VaultClient.of(
            ClientFactory.of(ctx.settings), scan_timeout_s=self._cfg.vault_scan_timeout_s
        )
        self._lease = Lease(ctx.settings.redis, self._cfg.lease_ttl_s)
        self.consolidator = Consolidator(
            self._store,
            self._vault,
            self._lease,
            ctx.bus,
            self._metrics,
            self._cfg,
            self._numerics,
        )
        self._schedule = Schedule(self.consolidator, ctx.tasks)
        self._config_spec = self._schedule.spec  # the schedule the config set (start())
        c = self.consolidator
        self._pressure = PressureWatcher(
            c,
            lambda: c.knobs.pressure_threshold,
            lambda: Selection(max_episodes=c.knobs.max_episodes),
            self._cfg.pressure_poll_s,
        )

    def register(self, server: grpc.aio.Server) -> None:
        # CommitGraph's bounds, one set for the service: every namespace's unit shares them.
        self._commit_streams = StreamLimits(
            self._cfg.max_concurrent_streams, self._cfg.max_stream_bytes, "sleep_scheduler"
        )
        default = SchedulerUnit(
            DEFAULT,
            self._store,
            self._vault,
            self.consolidator,
            self._schedule,
            SleepSchedulerServicer(
                GraphRpcs(self._store, self._io, self._commit_streams),
                JobRpcs(self.consolidator, self._schedule),
            ),
        )
        # One graph per namespace: each call is answered by its namespace's unit.
        self._units = scheduler_units(
            self._ctx.settings,
            graph_dir(self._ctx.settings),
            default,
            SleepSchedulerServicer,
            self._io,
            self._numerics,
            self._commit_streams,
            self._ctx.bus,
            self._ctx.tasks,
        )
        add_scoped_servicer(
            sleep_pb2_grpc.add_SleepSchedulerServicer_to_server,
            self._units.servicer(),
            server,
            self._units.prepare,
        )

    async def start(self) -> None:
        latest = self._store.read()
        self._metrics.version.set(latest.meta.version)
        self._metrics.edges.set(latest.meta.edge_count)
        self._metrics.prototypes.set(latest.prototypes.shape[0])
        if self._cfg.schedule_cron or self._cfg.schedule_every_s:
            self._schedule.set(
                ScheduleSpec(
                    self._cfg.schedule_cron,
                    self._cfg.schedule_every_s,
                    Selection(max_episodes=self._cfg.max_episodes),
                )
            )
        self._config_spec = self._schedule.spec
        self._pressure.start(self._ctx.bus, self._ctx.tasks)

    # -- config reload (common/reload.py) -------------------------------------------------------

    def live_settings(self) -> dict[str, Callable[[], object]]:
        """The keys declared Live on SleepSchedulerConfig, each read where it is in force.

        Not live: graph_dir (the open store) and lease_ttl_s (a held lease renews on its TTL).
        """

        def knob(name: str) -> Callable[[], object]:
            return lambda: getattr(self.consolidator.knobs, name)

        elsewhere: dict[str, Callable[[], object]] = {
            "keep_versions": lambda: self._store.keep,
            "pressure_poll_s": lambda: self._pressure.poll_s,
            "schedule_cron": lambda: self._schedule.spec.cron,
            "schedule_every_s": lambda: self._schedule.spec.every_s,
        }
        return {f"sleep_scheduler.{n}": elsewhere.get(n) or knob(n) for n in LIVE}

    async def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        """Config reload: the changed keys take effect; a bad cron refuses them all."""
        cfg = settings.sleep_scheduler
        changed = section_changes(changes, "sleep_scheduler")
        spec = None
        # The configured schedule runs with max_episodes as its selection: re-armed when that
        # changes too, unless ScheduleConsolidation has replaced it since.
        if {"schedule_cron", "schedule_every_s"} & changed.keys() or (
            "max_episodes" in changed
            and self._config_spec.active
            and self._schedule.spec == self._config_spec
        ):
            try:
                spec = ScheduleSpec(
                    cfg.schedule_cron,
                    cfg.schedule_every_s,
                    Selection(max_episodes=cfg.max_episodes),
                )
            except ValueError as exc:
                raise ValueError(f"sleep_scheduler.schedule_cron: {exc}") from None
        update = {name: getattr(cfg, name) for name in LIVE_KNOBS if name in changed}
        self.consolidator.knobs = k = self.consolidator.knobs.model_copy(update=update)
        if "keep_versions" in changed:
            self._store.keep = cfg.keep_versions  # the next commit drops versions beyond it
        if "pressure_poll_s" in changed:
            self._pressure.poll_s = cfg.pressure_poll_s
        if spec is not None:
            self._schedule.set(spec)
            self._config_spec = spec
        self._metrics.t0.set(k.t0)
        self._metrics.eta.set(k.eta)

    async def stop(self) -> None:
        if self._units is not None:
            await self._units.close()
        await self._pressure.stop()
        await self._schedule.stop()
        await self.consolidator.close()
        await self._vault.close()
        self._numerics.shutdown(wait=True)
        self._io.shutdown(wait=True)


def main() -> None:
    sys.exit(run("sleep-scheduler", "sleep_scheduler", SleepSchedulerService))


if __name__ == "__main__":
    main()
