"""A channel the gateway stops using after a reload closes in a task the clients keep: a call
in flight on it finishes within its grace, and close() waits for that close instead of leaving
it running unowned."""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client import CollectorRegistry

from mcp_services.common.clients import ClientFactory
from mcp_services.gateway import metrics as gateway_metrics
from mcp_services.gateway.backends import CallSpec, ServiceClients
from mcp_services.gateway.routing import Targets
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from tests.conftest import SettingsFactory

GUARD_S = 10.0  # a guard against a hang, not a timing assertion


class HeldVault(episodic_pb2_grpc.EpisodicVaultServicer):
    """GetStats answers only once released. A stand-in: a real vault answers at once."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def GetStats(
        self, request: episodic_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.GetStatsResponse:
        self.entered.set()
        await self.release.wait()
        return episodic_pb2.GetStatsResponse(last_seq=7)


class TestRetiredChannels:
    def test_close_waits_for_a_retired_channel_and_its_call_in_flight(
        self, make_settings: SettingsFactory
    ) -> None:
        """retain() drops the only channel while a call is in flight: the call still answers,
        and close() returns only after the retired channel has closed."""
        settings = make_settings()

        async def main() -> None:
            vault = HeldVault()  # type: ignore[abstract]
            server = grpc.aio.server()
            episodic_pb2_grpc.add_EpisodicVaultServicer_to_server(vault, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            target = f"127.0.0.1:{port}"
            targets = Targets(target, target, target, target)
            clients = ServiceClients(
                gateway_metrics.GatewayMetrics(CollectorRegistry()), ClientFactory.of(settings)
            )
            spec = CallSpec("episodic_vault", "GetStats", GUARD_S, "stats_s", idempotent=True)
            try:
                call = asyncio.create_task(
                    clients.call(
                        spec,
                        episodic_pb2.GetStatsRequest(),
                        route="primary",
                        targets=targets,
                        cfg=settings.gateway,
                    )
                )
                await asyncio.wait_for(vault.entered.wait(), GUARD_S)
                clients.retain([])  # a reload moved every route elsewhere
                closing = asyncio.create_task(clients.close())
                await asyncio.sleep(0.1)
                assert not closing.done(), "close() returned while the retired channel was open"
                vault.release.set()
                answer = await asyncio.wait_for(call, GUARD_S)
                assert answer.last_seq == 7
                await asyncio.wait_for(closing, GUARD_S)
            finally:
                vault.release.set()
                await server.stop(0)

        asyncio.run(main())
