"""KoopmanLearner server:
`python -m mcp_services.koopman_learner.server` (gRPC 50054, metrics 9094).

This version serves the tuning knobs in force (GetConfig) and exports the rank as a metric; the
learning RPCs arrive with the KoopmanLearner issue.
"""

from __future__ import annotations

import sys

import grpc
from prometheus_client import Gauge

from mcp_services.common import metric_names as names
from mcp_services.common.config_schema import KoopmanLearnerConfig
from mcp_services.common.server import Context, run
from mcp_services.gen.tori.koopman.v1 import koopman_pb2, koopman_pb2_grpc

SERVICE_NAME = koopman_pb2.DESCRIPTOR.services_by_name["KoopmanLearner"].full_name


class KoopmanLearnerServicer(koopman_pb2_grpc.KoopmanLearnerServicer):
    def __init__(self, cfg: KoopmanLearnerConfig) -> None:
        self._cfg = cfg

    async def GetConfig(
        self, request: koopman_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> koopman_pb2.KoopmanConfig:
        c = self._cfg
        return koopman_pb2.KoopmanConfig(
            rank=c.rank,
            rank_high=c.rank_high,
            psi_drift_threshold=c.psi_drift_threshold,
            l1_strength=c.l1_strength,
            forgetting_factor=c.forgetting_factor,
            max_modes=c.max_modes,
            auto_tune=c.auto_tune,
        )


class KoopmanLearnerService:
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context) -> None:
        self._cfg = ctx.settings.koopman_learner
        Gauge(names.KCL_RANK, "DMD rank in force.", registry=ctx.registry).set(self._cfg.rank)

    def register(self, server: grpc.aio.Server) -> None:
        koopman_pb2_grpc.add_KoopmanLearnerServicer_to_server(
            KoopmanLearnerServicer(self._cfg), server
        )

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def main() -> None:
    sys.exit(run("koopman-learner", "koopman_learner", KoopmanLearnerService))


if __name__ == "__main__":
    main()
