"""SparsePruner server: `python -m mcp_services.sparse_pruner.server` (gRPC 50053, metrics 9093).

This version serves the tuning knobs in force (GetConfig) and exports them as metrics; the pruning
RPCs arrive with the SparsePruner issue.
"""

from __future__ import annotations

import sys

import grpc
from prometheus_client import Gauge

from mcp_services.common import metric_names as names
from mcp_services.common.config_schema import SparsePrunerConfig
from mcp_services.common.server import Context, run
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc

SERVICE_NAME = pruner_pb2.DESCRIPTOR.services_by_name["SparsePruner"].full_name


class SparsePrunerServicer(pruner_pb2_grpc.SparsePrunerServicer):
    def __init__(self, cfg: SparsePrunerConfig) -> None:
        self._cfg = cfg

    async def GetConfig(
        self, request: pruner_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.PrunerConfig:
        c = self._cfg
        return pruner_pb2.PrunerConfig(
            tau=c.tau,
            l1_threshold=c.l1_threshold,
            max_quality_drop=c.max_quality_drop,
            auto_tune=c.auto_tune,
        )


class SparsePrunerService:
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context) -> None:
        self._cfg = ctx.settings.sparse_pruner
        Gauge(names.PRUNER_TAU, "L1 strength in force (relative).", registry=ctx.registry).set(
            self._cfg.tau
        )

    def register(self, server: grpc.aio.Server) -> None:
        pruner_pb2_grpc.add_SparsePrunerServicer_to_server(SparsePrunerServicer(self._cfg), server)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def main() -> None:
    sys.exit(run("sparse-pruner", "sparse_pruner", SparsePrunerService))


if __name__ == "__main__":
    main()
