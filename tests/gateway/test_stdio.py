"""The gateway over stdio (`python -m mcp_services.gateway --stdio`), driven by the SDK's client."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from mcp import Client, StdioServerParameters

from tests.gateway.conftest import KEY_A, Stack, text

ROOT = __file__.rsplit("/tests/", 1)[0]


def stdio_session(stack: Stack, key: str) -> Client:
    env = dict(stack.env) | {"GATEWAY_API_KEY": key, "VAULT_EMBEDDING_DIM": "8"}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_services.gateway", "--stdio"], env=env, cwd=ROOT
    )
    return Client(params)


class TestStdio:
    def test_put_get_stats_over_stdio(self, stack: Stack) -> None:
        """A desktop-style client spawns the gateway and stores and reads episodes through it."""

        async def go() -> list[Any]:
            async with stdio_session(stack, KEY_A) as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert {"memory.put", "memory.get", "memory.stats"} <= names
                out = []
                for i in range(10):
                    r = await client.call_tool(
                        "memory.put",
                        {
                            "episodeBlob": f"stdio {i}",
                            "meta": {"id": f"s-{i}", "concepts": ["concept:x"]},
                        },
                    )
                    assert not r.is_error, text(r)
                r = await client.call_tool("memory.get", {"id": "s-3"})
                out.append(r.structured_content)
                r = await client.call_tool("memory.stats", {})
                out.append(r.structured_content)
                return out

        got, stats = asyncio.run(go())
        assert got["found"] and got["episode"]["episodeBlob"] == "stdio 3"
        assert stats["episodes"]["total"] == 10
        assert stack.vault.count() == 10

    def test_a_wrong_key_refuses_every_call_over_stdio(self, stack: Stack) -> None:
        """With a wrong GATEWAY_API_KEY every tool call is an error and nothing is stored."""

        async def go() -> list[tuple[bool, str]]:
            async with stdio_session(stack, "tori_wrong_key_000000000000") as client:
                out = []
                for tool, args in (
                    ("memory.put", {"concepts": ["concept:x"]}),
                    ("memory.get", {"id": "x"}),
                    ("memory.stats", {}),
                ):
                    r = await client.call_tool(tool, args)
                    out.append((bool(r.is_error), text(r)))
                return out

        for is_error, message in asyncio.run(go()):
            assert is_error and "unauthorized: the API key is not valid" in message, message
            assert "GATEWAY_API_KEY" in message
        assert stack.vault.count() == 0
