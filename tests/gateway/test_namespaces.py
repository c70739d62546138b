"""Tenants through the real gateway: a key's tenant is its namespace, so tenant bob can neither read
tenant alice's episodes (memory.get, memory.recall, memory.search) nor take her ids first."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from mcp_services.gateway.app import GatewayThread
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vpb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from tests.gateway.conftest import Stack, mcp_session, text

ALICE_KEY = "tori_test_key_alice_0123456789"
BOB_KEY = "tori_test_key_bob_000123456789"
PLAIN_KEY = "tori_test_key_plain_0123456789"
SECRET = {"diary": "alice-secret-payload"}
ALICE_CONCEPTS = {"concept:alice-garden": 0.9, "concept:alice-keys": 0.8}
ALICE_VECTOR = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def two_tenants(stack: Stack) -> GatewayThread:
    stack.env = stack.env | {
        "GATEWAY_API_KEYS": f"{ALICE_KEY} alice,{BOB_KEY} bob,{PLAIN_KEY}",
        "GATEWAY_AUTH_REQUIRED": "true",
    }
    return stack.gateway()


async def _tool(url: str, key: str, tool: str, args: dict[str, Any]) -> tuple[bool, str]:
    async with mcp_session(url, key) as client:
        result = await client.call_tool(tool, args)
    return bool(result.is_error), text(result)


def tool(url: str, key: str, tool_name: str, args: dict[str, Any]) -> tuple[bool, str]:
    """(is_error, text) of one tool call as the holder of `key`."""
    return asyncio.run(_tool(url, key, tool_name, args))


def alice_puts(url: str, episode_id: str) -> dict[str, Any]:
    failed, out = tool(
        url,
        ALICE_KEY,
        "memory.put",
        {
            "id": episode_id,
            "episodeBlob": SECRET,
            "concepts": ALICE_CONCEPTS,
            "embedding": ALICE_VECTOR,
            "tags": ["alice-tag"],
        },
    )
    assert not failed, out
    result: dict[str, Any] = json.loads(out)
    return result


class TestTenantAttacks:
    def test_bob_cannot_read_alices_episode_by_get(self, stack: Stack) -> None:
        """memory.get of alice's id with bob's key is not found and says nothing of hers."""
        gw = two_tenants(stack)
        alice_puts(gw.url, "alice-ep-1")
        failed, out = tool(gw.url, BOB_KEY, "memory.get", {"id": "alice-ep-1"})
        assert not failed and json.loads(out) == {"found": False, "id": "alice-ep-1"}, out
        assert "alice-secret" not in out and "alice-garden" not in out
        failed, mine = tool(gw.url, ALICE_KEY, "memory.get", {"id": "alice-ep-1"})
        assert not failed and "alice-secret-payload" in mine

    def test_bob_cannot_read_alices_episode_by_recall(self, stack: Stack) -> None:
        """memory.recall with alice's very concepts returns none of her episodes to bob."""
        gw = two_tenants(stack)
        alice_puts(gw.url, "alice-ep-2")
        args = {"concepts": ALICE_CONCEPTS, "includeBlob": True}
        failed, out = tool(gw.url, BOB_KEY, "memory.recall", args)
        assert not failed, out
        assert json.loads(out)["hits"] == []
        assert "alice-ep-2" not in out and "alice-secret" not in out
        failed, mine = tool(gw.url, ALICE_KEY, "memory.recall", args)
        assert [h["episode"]["id"] for h in json.loads(mine)["hits"]] == ["alice-ep-2"]

    def test_bob_cannot_read_alices_episode_by_search(self, stack: Stack) -> None:
        """memory.search with alice's exact embedding returns none of her episodes to bob."""
        gw = two_tenants(stack)
        alice_puts(gw.url, "alice-ep-3")
        args = {"embedding": ALICE_VECTOR, "includeBlob": True}
        failed, out = tool(gw.url, BOB_KEY, "memory.search", args)
        assert not failed, out
        found = json.loads(out)
        assert (found["hits"], found["indexSize"]) == ([], 0)
        assert "alice-ep-3" not in out and "alice-secret" not in out
        failed, mine = tool(gw.url, ALICE_KEY, "memory.search", args)
        assert [h["episode"]["id"] for h in json.loads(mine)["hits"]] == ["alice-ep-3"]

    def test_bob_cannot_take_alices_ids_first(self, stack: Stack) -> None:
        """Bob's put of an id alice has not used yet leaves her put of it working and hers."""
        gw = two_tenants(stack)
        failed, out = tool(
            gw.url, BOB_KEY, "memory.put", {"id": "alice-next", "episodeBlob": "bob squats"}
        )
        assert not failed and json.loads(out)["status"] == "created"
        assert alice_puts(gw.url, "alice-next")["status"] == "created"
        failed, mine = tool(gw.url, ALICE_KEY, "memory.get", {"id": "alice-next"})
        assert "alice-secret-payload" in mine and "bob squats" not in mine
        failed, his = tool(gw.url, BOB_KEY, "memory.get", {"id": "alice-next"})
        assert "bob squats" in his and "alice-secret" not in his


class TestWhereEpisodesGo:
    def test_a_key_without_a_tenant_uses_the_default_namespace(self, stack: Stack) -> None:
        """A plain key's puts land in the default namespace (what the vault serves without the
        header), a tenant key's in its own namespace."""
        gw = two_tenants(stack)
        failed, _ = tool(gw.url, PLAIN_KEY, "memory.put", {"id": "plain-1", "episodeBlob": "x"})
        assert not failed
        alice_puts(gw.url, "alice-ep-4")
        stub = episodic_pb2_grpc.EpisodicVaultStub(stack.vault.channel)
        assert stack.vault.count() == 1
        alice = stub.GetStats(
            vpb.GetStatsRequest(), metadata=(("x-tori-namespace", "alice"),), timeout=5
        )
        assert alice.episode_count == 1
        with pytest.raises(grpc.RpcError) as err:
            stub.GetEpisode(vpb.GetEpisodeRequest(id="alice-ep-4"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    def test_a_tool_argument_cannot_choose_the_namespace(self, stack: Stack) -> None:
        """No tool takes a namespace argument: naming one is refused and nothing is stored."""
        gw = two_tenants(stack)
        failed, out = tool(
            gw.url,
            BOB_KEY,
            "memory.get",
            {"id": "alice-ep-1", "namespace": "alice"},
        )
        assert failed and "namespace" in out
