"""The gateway over real streamable HTTP with the SDK's client, against a real vault."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2

from mcp_services.gateway.keygen import append_key, revoke_key
from tests.conftest import scrape_until
from tests.gateway.conftest import (
    KEY_A,
    KEY_B,
    Stack,
    call,
    mcp_session,
    refusal,
    text,
)

TOOLS = {"memory.put", "memory.get", "memory.stats", "memory.kcl_status"}


def episode(i: int) -> dict[str, Any]:
    """Half in the front-end's shape ({episodeBlob, meta}), half with explicit concepts."""
    if i % 2:
        return {
            "episodeBlob": {"text": f"moment {i}", "turn": i},
            "meta": {"id": f"fe-{i}", "concepts": {f"concept:c{i % 7}": 0.9}, "chat": "c1"},
        }
    return {
        "id": f"ex-{i}",
        "episodeBlob": f"moment {i}",
        "concepts": {f"concept:c{i % 7}": 0.8, "concept:shared": 0.6},
        "tags": ["test"],
        "energy": 0.5,
        "embedding": [float(i % 5 + 1)] + [0.5] * 7,
    }


def ep_id(i: int) -> str:
    return f"fe-{i}" if i % 2 else f"ex-{i}"


class TestTools:
    def test_put_100_get_and_stats_over_http(self, stack: Stack) -> None:
        """100 episodes (single puts and one batch) are stored, read back as given, and counted."""
        gw = stack.gateway()

        async def go() -> None:
            async with mcp_session(gw.url, KEY_A) as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert names >= TOOLS
                for i in range(60):
                    r = await client.call_tool("memory.put", episode(i))
                    assert not r.is_error, text(r)
                    assert r.structured_content == {
                        "stored": 1, "created": 1, "existing": 0, "id": ep_id(i),
                        "status": "created",
                    }  # fmt: skip
                r = await client.call_tool(
                    "memory.put", {"episodes": [episode(i) for i in range(60, 100)]}
                )
                assert not r.is_error, text(r)
                assert r.structured_content is not None
                assert r.structured_content["created"] == 40
                # A repeat of the same episode is recognised, not stored twice.
                r = await client.call_tool("memory.put", episode(7))
                assert r.structured_content is not None
                assert r.structured_content["status"] == "existing"

                r = await client.call_tool("memory.get", {"id": "fe-7"})
                assert r.structured_content is not None and r.structured_content["found"]
                got = r.structured_content["episode"]
                assert got["episodeBlob"] == {"text": "moment 7", "turn": 7}
                assert got["concepts"] == {"concept:c0": 0.9}
                assert got["metadata"] == {"chat": "c1"}
                r = await client.call_tool("memory.get", {"id": "ex-8"})
                assert r.structured_content is not None
                assert r.structured_content["episode"]["episodeBlob"] == "moment 8"
                r = await client.call_tool("memory.get", {"id": "never-stored"})
                assert r.structured_content == {"found": False, "id": "never-stored"}

                r = await client.call_tool("memory.stats", {})
                assert r.structured_content is not None, text(r)
                assert r.structured_content["episodes"]["total"] == 100

        asyncio.run(go())
        assert stack.vault.count() == 100

    def test_underscore_names_serve_the_same_tools(self, stack: Stack) -> None:
        """tool_names: underscore offers memory_put etc. for clients that reject dots."""
        gw = stack.gateway(tool_names="underscore")
        r = call(gw.url, KEY_A, "memory_put", {"id": "u-1", "concepts": ["concept:x"]})
        assert not r.is_error, text(r)
        r = call(gw.url, KEY_A, "memory_get", {"id": "u-1"})
        assert r.structured_content is not None and r.structured_content["found"]

        async def names() -> set[str]:
            async with mcp_session(gw.url, KEY_A) as client:
                return {t.name for t in (await client.list_tools()).tools}

        assert {n.replace(".", "_") for n in TOOLS} <= asyncio.run(names())

    def test_tools_describe_their_arguments(self, stack: Stack) -> None:
        """Every tool has a description and each put argument a description in its schema."""
        gw = stack.gateway()

        async def tools() -> list[Any]:
            async with mcp_session(gw.url, KEY_A) as client:
                return list((await client.list_tools()).tools)

        for tool in asyncio.run(tools()):
            assert tool.description and len(tool.description) > 80, tool.name
            for name, prop in tool.input_schema.get("properties", {}).items():
                assert prop.get("description"), f"{tool.name}.{name}"


def raw_post(url: str, key: str | None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "memory.put", "arguments": {"concepts": ["concept:x"]}},
    }  # fmt: skip
    return httpx2.post(url, json=body, headers=headers, timeout=10)


class TestAuth:
    def test_wrong_missing_and_revoked_keys_get_401_and_store_nothing(
        self, stack: Stack, tmp_path: Path
    ) -> None:
        """No key, a wrong key or a revoked key: 401 on every call, and the vault stays empty."""
        keys = tmp_path / "keys"
        good = append_key(keys, tenant="acme")
        gone = append_key(keys)
        gw = stack.gateway(api_keys_file=str(keys))
        revoke_key(keys, gone)
        assert gw.reload()
        for key in (None, "tori_wrong_key_0123456789abcdef", gone):
            resp = raw_post(gw.url, key)
            assert resp.status_code == 401, resp.text
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert resp.json()["error"]["message"].startswith("unauthorized: ")
            # The SDK's own client is refused too, whatever tool it calls.
            for tool in TOOLS:
                why = refusal(gw.url, key, tool, {"concepts": ["concept:x"]})
                assert why is not None and "unauthorized:" in why
        assert "revoked" in raw_post(gw.url, gone).json()["error"]["message"]
        assert stack.vault.count() == 0
        page = scrape_until(gw.metrics_url, 'gateway_auth_refused_total{reason="revoked"}')
        for reason in ("missing", "invalid", "revoked"):
            line = f'gateway_auth_refused_total{{reason="{reason}"}}'
            assert any(ln.startswith(line) and not ln.endswith(" 0.0") for ln in page.splitlines())
        # The good key still works, and its call is the only thing stored.
        r = call(gw.url, good, "memory.put", {"concepts": ["concept:x"]})
        assert not r.is_error, text(r)
        assert stack.vault.count("acme") == 1

    def test_a_new_key_works_and_a_revoked_one_stops_without_restart(
        self, stack: Stack, tmp_path: Path
    ) -> None:
        """Keys added to or revoked in the key file take effect at the next reload."""
        keys = tmp_path / "keys"
        first = append_key(keys)
        gw = stack.gateway(api_keys_file=str(keys), api_keys=[])
        later = append_key(keys)
        assert raw_post(gw.url, later).status_code == 401  # not reloaded yet
        assert gw.reload()
        assert raw_post(gw.url, later).status_code == 200
        revoke_key(keys, first)
        assert gw.reload()
        assert raw_post(gw.url, first).status_code == 401

    def test_health_needs_no_key(self, stack: Stack) -> None:
        """/healthz answers without a key (orchestrators and `make up` probe it)."""
        gw = stack.gateway()
        resp = httpx2.get(gw.url.removesuffix("/mcp") + "/healthz", timeout=5)
        assert resp.status_code == 200 and resp.json()["status"] == "ok"

    def test_metrics_count_calls_by_tool_outcome_and_route(self, stack: Stack) -> None:
        """Port 9095's page counts each call with its tool, outcome and route."""
        gw = stack.gateway()
        call(gw.url, KEY_B, "memory.put", {"concepts": ["concept:x"]})
        call(gw.url, KEY_B, "memory.put", {"concepts": {"concept:x": 2}})
        page = scrape_until(gw.metrics_url, 'outcome="invalid_argument"')
        assert (
            'gateway_tool_calls_total{outcome="ok",route="primary",tool="memory.put"} 1.0' in page
        )
        assert (
            'gateway_tool_calls_total{outcome="invalid_argument",route="primary",tool="memory.put"} 1.0'
            in page
        )
        assert 'gateway_tool_seconds_count{route="primary",tool="memory.put"} 2.0' in page
