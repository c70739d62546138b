"""The SleepScheduler servicer: each RPC handed to its half, GraphRpcs (graph_servicer.py: graph
reads, commits and completion) or JobRpcs (jobs_servicer.py: consolidation jobs, config, schedule),
with one error map over both (common/rpc.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from mcp_services.common.rpc import ErrorMap
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sleep_scheduler.rpc.graph_servicer import GRAPH_ERRORS, GraphRpcs
from mcp_services.sleep_scheduler.rpc.jobs_servicer import JOB_ERRORS, JobRpcs

SERVICE_NAME = sleep_pb2.DESCRIPTOR.services_by_name["SleepScheduler"].full_name

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
