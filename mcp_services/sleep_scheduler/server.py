"""SleepScheduler server:
`python -m mcp_services.sleep_scheduler.server` (gRPC 50052, metrics 9092).

Owns the versioned concept graph (graph_store.py) and serves it (graph_servicer.py): ReadGraph,
CommitGraph, ListGraphVersions, GetGraphStats, Complete, and the tuning knobs in force (GetConfig).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from prometheus_client import Gauge

from mcp_services.common import metric_names as names
from mcp_services.common.config_schema import Settings, SleepSchedulerConfig
from mcp_services.common.server import Context, run
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sleep_scheduler.graph_servicer import GraphRpcs
from mcp_services.sleep_scheduler.graph_store import GraphStore

SERVICE_NAME = sleep_pb2.DESCRIPTOR.services_by_name["SleepScheduler"].full_name


def graph_dir(settings: Settings) -> Path:
    """Where the graph versions live: sleep_scheduler.graph_dir, else <var_dir>/graphs."""
    cfg = settings.sleep_scheduler
    return Path(cfg.graph_dir) if cfg.graph_dir else Path(settings.paths.var_dir) / "graphs"


class SleepSchedulerServicer(sleep_pb2_grpc.SleepSchedulerServicer):
    def __init__(self, cfg: SleepSchedulerConfig, graphs: GraphRpcs) -> None:
        self._cfg = cfg
        self._graphs = graphs

    async def GetConfig(
        self, request: sleep_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.SchedulerConfig:
        c = self._cfg
        return sleep_pb2.SchedulerConfig(
            t0=c.t0, eta=c.eta, auto_tune=c.auto_tune, pressure_threshold=c.pressure_threshold
        )

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


class SleepSchedulerService:
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context) -> None:
        self._cfg = ctx.settings.sleep_scheduler
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="sleep-graph")
        self._store = GraphStore(graph_dir(ctx.settings), self._cfg.keep_versions)
        Gauge(names.SLEEP_T0, "Initial annealing temperature in force.", registry=ctx.registry).set(
            self._cfg.t0
        )
        Gauge(names.SLEEP_ETA, "Wake-sleep learning rate in force.", registry=ctx.registry).set(
            self._cfg.eta
        )

    def register(self, server: grpc.aio.Server) -> None:
        sleep_pb2_grpc.add_SleepSchedulerServicer_to_server(
            SleepSchedulerServicer(self._cfg, GraphRpcs(self._store, self._executor)), server
        )

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._executor.shutdown(wait=True)


def main() -> None:
    sys.exit(run("sleep-scheduler", "sleep_scheduler", SleepSchedulerService))


if __name__ == "__main__":
    main()
