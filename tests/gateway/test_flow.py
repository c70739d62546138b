"""The done-when flow: the SDK's client drives the gateway against a running fleet (all four
services in-process on free ports), over HTTP; and a wrong key stores nothing."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from mcp_services.common.config import load_config
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gateway.app import GatewayThread
from mcp_services.koopman_learner.server import KoopmanLearnerService
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from mcp_services.sparse_pruner.server import SparsePrunerService
from tests.conftest import free_ports, service_environ
from tests.gateway.conftest import KEY_A, mcp_session, refusal, text

ASSEMBLIES = [[f"concept:a{g}-{j}" for j in range(4)] for g in range(5)]


def episode(i: int) -> dict[str, Any]:
    """Episode i activates assembly i % 5 (plus a little noise) along a sinusoid in time."""
    group = ASSEMBLIES[i % 5]
    strength = round(0.55 + 0.4 * abs(math.sin(i / 3)), 3)
    emb = [0.1] * 8
    emb[i % 5] = 1.0
    return {
        "id": f"flow-{i:03d}",
        "episodeBlob": {"turn": i, "text": f"assembly {i % 5}"},
        "meta": {"concepts": {c: strength for c in group}, "tags": ["flow"], "session": "s1"},
        "embedding": emb,
        "timestamp": 1_760_000_000_000 + i * 1000,
    }


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[dict[str, str], GatewayThread]]:
    http, metrics = free_ports(2)
    env = service_environ(tmp_path / "var") | {
        "GATEWAY_PORT": str(http),
        "GATEWAY_METRICS_PORT": str(metrics),
        "GATEWAY_API_KEYS": KEY_A,
    }
    settings = load_config(
        environ=env, overrides={"vault": {"backend": "sqlite", "embedding_dim": 8}}
    )
    started: list[Any] = []
    try:
        for name, key, factory in (
            ("episodic-vault", "episodic_vault", VaultService),
            ("sleep-scheduler", "sleep_scheduler", SleepSchedulerService),
            ("sparse-pruner", "sparse_pruner", SparsePrunerService),
            ("koopman-learner", "koopman_learner", KoopmanLearnerService),
        ):
            started.append(ServerThread(name, key, factory, settings).start())
        gw = GatewayThread(settings).start()
        started.append(gw)
        yield env, gw
    finally:
        for s in reversed(started):
            s.stop()


async def drive(client: Client) -> dict[str, Any]:
    """The done-when flow through one client session; returns what each step answered."""
    seen: dict[str, Any] = {}
    for i in range(0, 100, 25):
        r = await client.call_tool(
            "memory.put", {"episodes": [episode(j) for j in range(i, i + 25)]}
        )
        assert not r.is_error, text(r)
    r = await client.call_tool("memory.search", {"embedding": episode(3)["embedding"], "k": 5})
    assert not r.is_error, text(r)
    seen["search"] = r.structured_content
    r = await client.call_tool(
        "memory.recall", {"concepts": ASSEMBLIES[2], "k": 5, "complete": False}
    )
    assert not r.is_error, text(r)
    seen["recall"] = r.structured_content
    r = await client.call_tool("memory.sleep", {"once": True})
    seen["sleep"] = (r.is_error, r.structured_content, text(r))
    r = await client.call_tool("memory.recall", {"concepts": ASSEMBLIES[2][:2], "k": 5})
    seen["recall_completed"] = (r.is_error, r.structured_content, text(r))
    r = await client.call_tool("memory.prune", {"dryRun": True})
    seen["prune"] = (r.is_error, r.structured_content, text(r))
    r = await client.call_tool("memory.kcl_status", {"modes": 3})
    seen["kcl"] = (r.is_error, r.structured_content, text(r))
    r = await client.call_tool("memory.stats", {})
    assert not r.is_error, text(r)
    seen["stats"] = r.structured_content
    return seen


def test_put_search_recall_sleep_prune_kcl_over_http(
    fleet: tuple[dict[str, str], GatewayThread],
) -> None:
    """Over HTTP: 100 episodes go in; search and recall find them; a sleep cycle consolidates
    them; prune and kcl_status answer; stats count them."""
    _, gw = fleet

    async def go() -> dict[str, Any]:
        async with mcp_session(gw.url, KEY_A) as client:
            return await drive(client)

    check(asyncio.run(go()))


def test_the_same_flow_over_stdio(fleet: tuple[dict[str, str], GatewayThread]) -> None:
    """Over stdio (a desktop client spawning the gateway): the same flow, the same answers."""
    env, _ = fleet
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_services.gateway", "--stdio"],
        env=env | {"GATEWAY_API_KEY": KEY_A},
        cwd=str(Path(__file__).resolve().parents[2]),
    )

    async def go() -> dict[str, Any]:
        async with Client(params) as client:
            return await drive(client)

    check(asyncio.run(go()))


def check(seen: dict[str, Any]) -> None:
    hits = seen["search"]["hits"]
    assert len(hits) == 5
    # The query is assembly 3's embedding: every hit is an episode of assembly 3.
    assert all(int(h["episode"]["id"][-3:]) % 5 == 3 for h in hits), hits
    recall = seen["recall"]["hits"]
    assert len(recall) == 5 and all(int(h["episode"]["id"][-3:]) % 5 == 2 for h in recall)
    assert set(recall[0]["matchedConcepts"]) == set(ASSEMBLIES[2])
    assert seen["stats"]["episodes"]["total"] == 100
    assert seen["stats"]["graph"]["available"] is True
    is_error, content, message = seen["sleep"]
    assert not is_error, message
    job = content["job"]
    assert job["state"] == "SUCCEEDED", job
    assert job["episodesProcessed"] == 100 and job["graphVersion"] >= 1
    is_error, content, message = seen["recall_completed"]
    assert not is_error, message
    assert content["completion"] in ("APPLIED", "DISABLED", "UNAVAILABLE")
    assert all(int(h["episode"]["id"][-3:]) % 5 == 2 for h in content["hits"])
    is_error, content, message = seen["prune"]
    assert not is_error, message
    assert content["job"]["dryRun"] is True and content["job"]["state"] in ("SUCCEEDED", "REFUSED")
    is_error, content, message = seen["kcl"]
    assert not is_error, message
    assert set(content) >= {"modelReady", "psiDrift", "couplings", "modes"}


def test_a_wrong_key_is_refused_for_every_tool_and_nothing_is_stored(
    fleet: tuple[dict[str, str], GatewayThread],
) -> None:
    """With a wrong key every tool call is refused (401) and the vault stays empty."""
    _, gw = fleet
    for tool, args in (
        ("memory.put", episode(1)), ("memory.get", {"id": "flow-001"}),
        ("memory.search", {"embedding": [1.0] * 8}), ("memory.recall", {"concepts": ["a"]}),
        ("memory.sleep", {"once": True}), ("memory.prune", {}), ("memory.kcl_status", {}),
        ("memory.stats", {}),
    ):  # fmt: skip
        why = refusal(gw.url, "tori_not_a_key_at_all_0000000", tool, args)
        assert why is not None and "unauthorized: the API key is not valid" in why

    async def count() -> int:
        async with mcp_session(gw.url, KEY_A) as client:
            r = await client.call_tool("memory.stats", {})
            assert r.structured_content is not None
            return int(r.structured_content["episodes"]["total"])

    assert asyncio.run(count()) == 0
