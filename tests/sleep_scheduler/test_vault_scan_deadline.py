"""The scheduler's vault Scan has a deadline (sleep_scheduler.vault_scan_timeout_s): a vault that
stalls mid-stream fails the read naming the key, instead of holding a cycle forever."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mcp_services.common.clients import ClientFactory
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.sleep_scheduler.adapters.vault_client import VaultClient
from mcp_services.sleep_scheduler.ports import Selection, VaultUnavailable
from tests.conftest import SettingsFactory

GUARD_S = 30.0  # a guard against a hang, not a timing assertion


class StalledVault(episodic_pb2_grpc.EpisodicVaultServicer):
    """Sends one episode of a Scan, then never another and never ends the stream.

    A stand-in: a real vault cannot be made to stall on demand."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def Scan(  # type: ignore[override]
        self, request: episodic_pb2.ScanRequest, context: grpc.aio.ServicerContext
    ) -> object:
        ep = episodic_pb2.Episode(id="e1", seq=1)
        ep.activation.concept_ids.append("c1")
        ep.activation.strengths.append(0.9)
        yield episodic_pb2.ScanResponse(episode=ep)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class TestScanDeadline:
    def test_default_comes_from_config(self, make_settings: SettingsFactory) -> None:
        """The knob exists with its documented default."""
        assert make_settings().sleep_scheduler.vault_scan_timeout_s == 300.0

    def test_stalled_scan_fails_naming_the_knob(self, make_settings: SettingsFactory) -> None:
        """The Scan ends at its deadline with VaultUnavailable naming vault_scan_timeout_s; the
        vault sees the call cancelled."""
        settings = make_settings()

        async def main() -> None:
            vault = StalledVault()  # type: ignore[abstract]
            server = grpc.aio.server()
            episodic_pb2_grpc.add_EpisodicVaultServicer_to_server(vault, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            target = f"127.0.0.1:{port}"
            channel = ClientFactory.of(settings).aio_channel(target=target)
            client = VaultClient(channel, target, scan_timeout_s=0.5)
            try:
                with pytest.raises(VaultUnavailable) as err:
                    await asyncio.wait_for(client.select(Selection()), GUARD_S)
                assert "sleep_scheduler.vault_scan_timeout_s" in str(err.value)
                assert target in str(err.value)
                await asyncio.wait_for(vault.cancelled.wait(), GUARD_S)
            finally:
                await client.close()
                await server.stop(0)

        asyncio.run(main())
