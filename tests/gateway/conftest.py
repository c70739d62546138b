"""A real vault (and, where they exist, the other services) on free ports, and a gateway in front.

Tools are driven with the mcp SDK's own client over real HTTP (`mcp_session`); the stdio tests
start the gateway as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from mcp_services.common.config import load_config
from mcp_services.common.config_schema import Settings
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gateway.app import GatewayThread
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vpb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from tests.conftest import free_ports, service_environ

KEY_A = "tori_test_key_alpha_0123456789"
KEY_B = "tori_test_key_bravo_0123456789"
KEY_OTHER_TENANT = "tori_test_key_charlie_012345678"


def vault_overrides() -> dict[str, Any]:
    return {"vault": {"backend": "memory", "embedding_dim": 8}}


@dataclass
class RunningVault:
    server: ServerThread
    channel: grpc.Channel

    @property
    def port(self) -> int:
        return int(self.server.running.grpc_port)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count(self, namespace: str = "default") -> int:
        """Episodes in `namespace` (a gateway key's tenant; keys without one use the default)."""
        stub = episodic_pb2_grpc.EpisodicVaultStub(self.channel)
        md = (("x-tori-namespace", namespace),)
        return int(stub.GetStats(vpb.GetStatsRequest(), metadata=md, timeout=5).episode_count)


@dataclass
class Stack:
    tmp: Path
    env: dict[str, str]
    vault: RunningVault
    started: list[Any]

    def settings(self, **gateway: Any) -> Settings:
        """Gateway settings for this stack; keyword arguments override the gateway section."""
        overrides = vault_overrides() | {"gateway": gateway}
        return load_config(environ=self.env, overrides=overrides)

    def gateway(self, **gateway: Any) -> GatewayThread:
        gw = GatewayThread(self.settings(**gateway)).start()
        self.started.append(gw)
        return gw

    def start_vault(self) -> RunningVault:
        env = service_environ(self.tmp / f"vault{len(self.started)}")
        settings = load_config(environ=env, overrides=vault_overrides())
        srv = ServerThread("episodic-vault", "episodic_vault", VaultService, settings).start()
        v = RunningVault(srv, grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}"))
        self.started.append(v)
        return v


def _stop(item: Any) -> None:
    if isinstance(item, RunningVault):
        item.channel.close()
        item.server.stop()
    else:
        item.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A running vault and the environment a gateway in front of it reads."""
    started: list[Any] = []
    s = Stack(tmp_path, {}, None, started)  # type: ignore[arg-type]
    s.vault = s.start_vault()
    http_port, metrics_port = free_ports(2)
    s.env = service_environ(tmp_path / "var") | {
        "VAULT_GRPC_PORT": str(s.vault.port),
        "GATEWAY_PORT": str(http_port),
        "GATEWAY_METRICS_PORT": str(metrics_port),
        # KEY_A and KEY_B use the default namespace; a tenant is a namespace of its own.
        "GATEWAY_API_KEYS": f"{KEY_A},{KEY_B},{KEY_OTHER_TENANT} acme",
    }
    try:
        yield s
    finally:
        for item in reversed(started):
            with contextlib.suppress(Exception):
                _stop(item)


@contextlib.asynccontextmanager
async def mcp_session(url: str, key: str | None) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP, sending `key` as a bearer token."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def text(result: CallToolResult) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def call(url: str, key: str | None, tool: str, args: dict[str, Any]) -> CallToolResult:
    """One tool call in a fresh session (tests that need many calls use mcp_session)."""

    async def go() -> CallToolResult:
        async with mcp_session(url, key) as client:
            return await client.call_tool(tool, args)

    return asyncio.run(go())


Caller = Callable[[str, dict[str, Any]], CallToolResult]


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, as the SDK's task groups raise them."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaf_errors(sub)]
    return [exc]


def refusal(url: str, key: str | None, tool: str, args: dict[str, Any]) -> str | None:
    """What the SDK's client was refused with, or None if the call went through."""
    try:
        call(url, key, tool, args)
    except BaseException as exc:  # the SDK raises from inside its task group
        return " | ".join(str(leaf) for leaf in leaf_errors(exc))
    return None
