"""SleepScheduler server:
`python -m mcp_services.sleep_scheduler.server` (gRPC 50052, metrics 9092).

Owns the versioned concept graph (graph_store.py, served by graph_servicer.py) and consolidates
the vault's episodes into it (consolidator.py, served by jobs_servicer.py), started by an RPC,
the trigger command, vault pressure or the schedule (triggers.py).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import structlog

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import Settings, live_fields
from mcp_services.common.namespaces import DEFAULT, NamespaceUnits, add_scoped_servicer
from mcp_services.common.reload import Change, section_changes
from mcp_services.common.rpc import ErrorMap
from mcp_services.common.server import Context, StartupError, run
from mcp_services.common.stream_limits import StreamLimits
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sleep_scheduler.consolidator import Consolidator
from mcp_services.sleep_scheduler.graph_servicer import GRAPH_ERRORS, GraphRpcs
from mcp_services.sleep_scheduler.graph_store import GraphStore
from mcp_services.sleep_scheduler.jobs_servicer import JOB_ERRORS, JobRpcs
from mcp_services.sleep_scheduler.lease import Lease
from mcp_services.sleep_scheduler.metrics import SleepMetrics
from mcp_services.sleep_scheduler.namespaces import SchedulerUnit, scheduler_units
from mcp_services.sleep_scheduler.ports import EpisodeSource, Selection
from mcp_services.sleep_scheduler.settings import SleepSchedulerConfig
from mcp_services.sleep_scheduler.triggers import PressureWatcher, Scheduler, ScheduleSpec
from mcp_services.sleep_scheduler.vault_client import VaultClient

SERVICE_NAME = sleep_pb2.DESCRIPTOR.services_by_name["SleepScheduler"].full_name
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


ERRORS = ErrorMap({**GRAPH_ERRORS, **JOB_ERRORS})


@ERRORS.servicer
class SleepSchedulerServicer(sleep_pb2_grpc.SleepSchedulerServicer):
    def __init__(self, graphs: GraphRpcs, jobs: JobRpcs) -> None:
        self._graphs = graphs
        self._jobs = jobs

    async def GetConfig(
        self, request: sleep_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.SchedulerConfig:
        return self._jobs.config()

    async def ReadGraph(
        self, request: sleep_pb2.ReadGraphRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sleep_pb2.GraphChunk]:
        async for chunk in self._graphs.read_graph(request, context):
            yield chunk

    async def CommitGraph(
        self,
        request_iterator: AsyncIterator[sleep_pb2.GraphChunk],
        context: grpc.aio.ServicerContext,
    ) -> sleep_pb2.CommitGraphResponse:
        return await self._graphs.commit_graph(request_iterator, context)

    async def ListGraphVersions(
        self, request: sleep_pb2.ListGraphVersionsRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ListGraphVersionsResponse:
        return await self._graphs.list_versions(context)

    async def GetGraphStats(
        self, request: sleep_pb2.GetGraphStatsRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.GraphStats:
        return await self._graphs.stats(request, context)

    async def Complete(
        self, request: sleep_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.CompleteResponse:
        return await self._graphs.complete(request, context)

    async def StartConsolidation(
        self, request: sleep_pb2.StartConsolidationRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ConsolidationJob:
        return await self._jobs.start(request, context)

    async def GetConsolidationStatus(
        self, request: sleep_pb2.GetConsolidationStatusRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ConsolidationJob:
        return await self._jobs.status(request, context)

    async def CancelConsolidation(
        self, request: sleep_pb2.CancelConsolidationRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ConsolidationJob:
        return await self._jobs.cancel(request, context)

    async def GetReplayStats(
        self, request: sleep_pb2.GetReplayStatsRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ReplayStats:
        return await self._graphs.call(self._jobs.replay_stats)

    async def UpdateConfig(
        self, request: sleep_pb2.UpdateConfigRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.SchedulerConfig:
        return await self._jobs.update_config(request, context)

    async def ScheduleConsolidation(
        self, request: sleep_pb2.ScheduleConsolidationRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ScheduleConsolidationResponse:
        return await self._jobs.schedule(request, context)


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
        self._scheduler = Scheduler(self.consolidator, ctx.tasks)
        self._config_spec = self._scheduler.spec  # the schedule the config set (start())
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
            self._scheduler,
            SleepSchedulerServicer(
                GraphRpcs(self._store, self._io, self._commit_streams),
                JobRpcs(self.consolidator, self._scheduler),
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
            self._scheduler.set(
                ScheduleSpec(
                    self._cfg.schedule_cron,
                    self._cfg.schedule_every_s,
                    Selection(max_episodes=self._cfg.max_episodes),
                )
            )
        self._config_spec = self._scheduler.spec
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
            "schedule_cron": lambda: self._scheduler.spec.cron,
            "schedule_every_s": lambda: self._scheduler.spec.every_s,
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
            and self._scheduler.spec == self._config_spec
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
            self._scheduler.set(spec)
            self._config_spec = spec
        self._metrics.t0.set(k.t0)
        self._metrics.eta.set(k.eta)

    async def stop(self) -> None:
        if self._units is not None:
            await self._units.close()
        await self._pressure.stop()
        await self._scheduler.stop()
        await self.consolidator.close()
        await self._vault.close()
        self._numerics.shutdown(wait=True)
        self._io.shutdown(wait=True)


def main() -> None:
    sys.exit(run("sleep-scheduler", "sleep_scheduler", SleepSchedulerService))


if __name__ == "__main__":
    main()
