"""SleepScheduler server:
`python -m mcp_services.sleep_scheduler.server` (gRPC 50052, metrics 9092).

This version serves the tuning knobs in force (GetConfig) and exports them as metrics; the graph
and consolidation RPCs arrive with the SleepScheduler issue.
"""

from __future__ import annotations

import sys

import grpc
from prometheus_client import Gauge

from mcp_services.common import metric_names as names
from mcp_services.common.config_schema import SleepSchedulerConfig
from mcp_services.common.server import Context, run
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc

SERVICE_NAME = sleep_pb2.DESCRIPTOR.services_by_name["SleepScheduler"].full_name


class SleepSchedulerServicer(sleep_pb2_grpc.SleepSchedulerServicer):
    def __init__(self, cfg: SleepSchedulerConfig) -> None:
        self._cfg = cfg

    async def GetConfig(
        self, request: sleep_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.SchedulerConfig:
        c = self._cfg
        return sleep_pb2.SchedulerConfig(
            t0=c.t0, eta=c.eta, auto_tune=c.auto_tune, pressure_threshold=c.pressure_threshold
        )


class SleepSchedulerService:
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context) -> None:
        self._cfg = ctx.settings.sleep_scheduler
        Gauge(names.SLEEP_T0, "Initial annealing temperature in force.", registry=ctx.registry).set(
            self._cfg.t0
        )
        Gauge(names.SLEEP_ETA, "Wake-sleep learning rate in force.", registry=ctx.registry).set(
            self._cfg.eta
        )

    def register(self, server: grpc.aio.Server) -> None:
        sleep_pb2_grpc.add_SleepSchedulerServicer_to_server(
            SleepSchedulerServicer(self._cfg), server
        )

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def main() -> None:
    sys.exit(run("sleep-scheduler", "sleep_scheduler", SleepSchedulerService))


if __name__ == "__main__":
    main()
