"""The gateway behind services with auth on: it calls them with the fleet's key, and says so at
start when it requires keys of its callers while the services require none."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx2
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from mcp_services.common.config import load_config
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gateway.app import GatewayThread, build
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from tests.conftest import service_environ
from tests.gateway.conftest import KEY_A, vault_overrides

SERVICE_ADMIN = "svc-admin-key-0123456789"
SERVICE_READER = "svc-read-key-0123456789"


def put_through(url: str) -> httpx2.Response:
    body = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "memory.put", "arguments": {"concepts": ["concept:x"]}},
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {KEY_A}", "Accept": "application/json, text/event-stream"}
    return httpx2.post(url, json=body, headers=headers, timeout=30)


class TestGatewayWithServiceKeys:
    def test_tools_reach_services_with_the_fleets_admin_key(self, tmp_path: Path) -> None:
        """With service keys on, memory.put through the gateway stores the episode (the
        gateway sends the first admin key), and the vault refuses the same put without one."""
        env = service_environ(
            tmp_path / "var",
            TORI_API_KEYS=f"{SERVICE_READER} read,{SERVICE_ADMIN} admin",
            GATEWAY_API_KEYS=KEY_A,
            GATEWAY_AUTH_REQUIRED="true",
        )
        settings = load_config(environ=env, overrides=vault_overrides())
        with (
            ServerThread("episodic-vault", "episodic_vault", VaultService, settings) as vault,
            GatewayThread(settings) as gw,
        ):
            reply = put_through(gw.url)
            assert reply.status_code == 200 and '"isError":true' not in reply.text, reply.text
            with grpc.insecure_channel(f"127.0.0.1:{vault.running.grpc_port}") as ch:
                stub = episodic_pb2_grpc.EpisodicVaultStub(ch)
                md = (("authorization", f"Bearer {SERVICE_READER}"),)
                assert stub.GetStats(pb.GetStatsRequest(), metadata=md).episode_count == 1
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetStats(pb.GetStatsRequest())
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def test_required_gateway_keys_over_keyless_services_are_reported_at_start(
        self, tmp_path: Path
    ) -> None:
        """gateway.auth_required with no service key logs services_without_keys with the fix;
        with a service key it does not."""
        base = service_environ(tmp_path / "var", GATEWAY_API_KEYS=KEY_A)
        base["GATEWAY_AUTH_REQUIRED"] = "true"
        for env, expected in (
            (base, True),
            ({**base, "TORI_API_KEYS": f"{SERVICE_ADMIN} admin"}, False),
            ({**base, "GATEWAY_AUTH_REQUIRED": "false"}, False),
        ):
            with capture_logs() as logs:
                build(load_config(environ=env), CollectorRegistry())
            said = [e for e in logs if e["event"] == "services_without_keys"]
            assert bool(said) == expected, env
            if said:
                assert "TORI_API_KEYS_FILE" in said[0]["fix"]
