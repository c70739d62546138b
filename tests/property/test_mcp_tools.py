"""Property tests over every MCP tool's arguments, through the real gateway over HTTP.

Arbitrary JSON arguments (the tool's own argument names mixed with unknown ones, values of every
JSON type) go to each tool the gateway lists. The properties: the gateway answers every call
with HTTP 200 and either a result or a tool error whose text starts with the tool's name (never
a JSON-RPC internal error or a 5xx), a tool error stores nothing, and the gateway is still
serving at the end.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_services.gateway.app import GatewayThread
from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from tests.conftest import free_ports
from tests.property.fleet import Fleet

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "60"))
KEY = "tori_property_key_0123456789abcdef"
TOOLS = (
    "memory.put", "memory.get", "memory.search", "memory.recall", "memory.sleep", "memory.prune",
    "memory.kcl_status", "memory.stats",
)  # fmt: skip

_ids = itertools.count(1)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def gateway(fleet: Fleet) -> Iterator[tuple[GatewayThread, httpx2.Client, dict[str, Any]]]:
    http_port, metrics_port = free_ports(2)
    gw_settings = fleet.settings.model_copy(
        update={
            "gateway": fleet.settings.gateway.model_copy(
                update={
                    "port": http_port,
                    "metrics_port": metrics_port,
                    "api_keys": [KEY],
                    "auth_required": True,
                }
            )
        }
    )
    gw = GatewayThread(gw_settings).start()
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "application/json, text/event-stream"}
    with httpx2.Client(headers=headers, timeout=30) as http:
        listed = http.post(gw.url, json={"jsonrpc": "2.0", "id": 0, "method": "tools/list"})
        schemas = {t["name"]: t["inputSchema"] for t in listed.json()["result"]["tools"]}
        try:
            yield gw, http, schemas
        finally:
            gw.stop()


def _episodes(fleet: Fleet) -> int:
    ch = fleet.services["episodic_vault"].channel
    stats = ch.unary_unary(
        "/tori.episodic.v1.EpisodicVault/GetStats",
        request_serializer=episodic_pb2.GetStatsRequest.SerializeToString,
        response_deserializer=episodic_pb2.GetStatsResponse.FromString,
    )(episodic_pb2.GetStatsRequest(), timeout=10)
    return int(stats.episode_count)


def _arguments(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    names = sorted(schema.get("properties", {})) or ["x"]
    keys = st.sampled_from(names) | st.text(min_size=1, max_size=10)
    return st.dictionaries(keys, JSON, max_size=5)


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_arguments(
    tool: str, fleet: Fleet, gateway: tuple[GatewayThread, httpx2.Client, dict[str, Any]]
) -> None:
    gw, http, schemas = gateway
    assert tool in schemas, f"the gateway does not list {tool}"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(arguments=_arguments(schemas[tool]))
    def prop(arguments: dict[str, Any]) -> None:
        before = _episodes(fleet)
        body = {
            "jsonrpc": "2.0",
            "id": next(_ids),
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        reply = http.post(gw.url, json=body)
        assert reply.status_code == 200, reply.text
        message = reply.json()
        assert "error" not in message or message["error"]["code"] != -32603, message
        if "error" in message:  # a protocol-level refusal (invalid params) must say why
            assert message["error"]["message"], message
            return
        result = message["result"]
        if result.get("isError"):
            text = " ".join(c.get("text", "") for c in result["content"])
            assert text.startswith(f"{tool}: "), text
            assert _episodes(fleet) == before, f"{tool} refused {arguments} but stored something"

    prop()
    health = http.post(gw.url, json={"jsonrpc": "2.0", "id": 0, "method": "tools/list"})
    assert health.status_code == 200
