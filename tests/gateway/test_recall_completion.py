"""memory.recall completes a partial cue through what sleep learned, with no setting to turn on:
the SDK's client over streamable HTTP, a gateway and the four services on free ports.

Completion is on by default (vault.recall.scheduler_address empty: the fleet's own scheduler),
so neither test sets it. The episodes are the demo's scenes (mcp_services/demo/scenes.py):
concepts that occur together, as noisy copies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_services.common.config import load_config
from mcp_services.common.server import ServerThread
from mcp_services.demo import scenes
from mcp_services.episodic_vault.adapters.completion import completion_address
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gateway.app import GatewayThread
from mcp_services.koopman_learner.server import KoopmanLearnerService
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from mcp_services.sparse_pruner.server import SparsePrunerService
from tests.conftest import free_ports, service_environ
from tests.gateway.conftest import KEY_A, Stack, mcp_session, text

SEED = 15
SCENE, CUE = scenes.CUES[0]  # kitchen: {kettle, cup}


def scene_episodes() -> list[dict[str, Any]]:
    """The demo's routine in memory.put's shape, timestamps 0.1 s apart in the past."""
    start_ms = 1_760_000_000_000
    return [
        {
            "id": ep.episode_id,
            "concepts": ep.strengths,
            "tags": ["scenes", f"scene:{ep.scene}"],
            "timestamp": start_ms + ep.offset_ms,
        }
        for ep in scenes.routine("gw", 100, SEED)
    ]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[GatewayThread]:
    http, metrics = free_ports(2)
    env = service_environ(tmp_path / "var") | {
        "GATEWAY_PORT": str(http),
        "GATEWAY_METRICS_PORT": str(metrics),
        "GATEWAY_API_KEYS": KEY_A,
    }
    settings = load_config(environ=env, overrides={"vault": {"backend": "sqlite"}})
    # Nothing configured: the vault completes through the scheduler this fleet runs.
    assert settings.vault.recall.scheduler_address == ""
    assert completion_address(settings) == f"127.0.0.1:{env['SLEEP_GRPC_PORT']}"
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
        yield gw
    finally:
        for s in reversed(started):
            s.stop()


def cue() -> list[str]:
    return [scenes.concept(c) for c in CUE]


class TestRecallCompletion:
    def test_a_partial_cue_is_completed_with_the_concepts_it_lacked(
        self, fleet: GatewayThread
    ) -> None:
        """After the scenes are stored and one memory.sleep, memory.recall of two kitchen
        concepts answers completion APPLIED with the graph version, an effective cue holding
        kitchen concepts the cue lacked, and kitchen episodes first; memory.stats shows the
        graph's edges and sleep a negative energy delta."""

        async def go() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            async with mcp_session(fleet.url, KEY_A) as client:
                r = await client.call_tool("memory.put", {"episodes": scene_episodes()})
                assert not r.is_error, text(r)
                r = await client.call_tool("memory.sleep", {"once": True})
                assert not r.is_error, text(r)
                seen["sleep"] = r.structured_content
                r = await client.call_tool("memory.recall", {"concepts": cue(), "k": 5})
                assert not r.is_error, text(r)
                seen["recall"] = r.structured_content
                r = await client.call_tool("memory.stats", {})
                seen["stats"] = r.structured_content
                r = await client.call_tool("memory.sleep", {"once": True})
                seen["again"] = r.structured_content
            return seen

        seen = asyncio.run(go())
        job = seen["sleep"]["job"]
        assert job["state"] == "SUCCEEDED" and job["energyDelta"] < 0, job
        recall = seen["recall"]
        assert recall["completion"] == "APPLIED", recall
        assert recall["completionDetail"] == "" and recall["graphVersion"] >= job["graphVersion"]
        effective = set(recall["effectiveCue"])
        added = effective - set(cue())
        kitchen = {scenes.concept(c) for c in scenes.SCENES[SCENE]}
        assert added and added <= kitchen, recall["effectiveCue"]
        assert set(cue()) <= effective
        assert [f"scene:{SCENE}" in h["episode"]["tags"] for h in recall["hits"]] == [True] * 5
        assert seen["stats"]["graph"]["edges"] > 0, seen["stats"]
        # A second sleep with nothing new says so instead of a bare energyDelta of 0.
        again = seen["again"]["job"]
        assert again["state"] == "SUCCEEDED" and again["episodesProcessed"] == 0, again
        assert again["notes"] and "nothing new" in again["notes"][0], again
        assert again["advice"] == [], again

    def test_the_cue_as_given_when_asked_or_when_no_scheduler_answers(self, stack: Stack) -> None:
        """With only a vault (its scheduler's address answers nothing), recall ranks by the cue
        as given and says so: UNAVAILABLE naming that address, never APPLIED; `complete: false`
        is DISABLED, saying the request asked for it."""
        gw = stack.gateway()

        async def go() -> tuple[dict[str, Any], dict[str, Any]]:
            async with mcp_session(gw.url, KEY_A) as client:
                r = await client.call_tool("memory.put", {"episodes": scene_episodes()[:16]})
                assert not r.is_error, text(r)
                asked = await client.call_tool("memory.recall", {"concepts": cue()})
                plain = await client.call_tool(
                    "memory.recall", {"concepts": cue(), "complete": False}
                )
                assert asked.structured_content and plain.structured_content
                return asked.structured_content, plain.structured_content

        asked, plain = asyncio.run(go())
        assert asked["completion"] == "UNAVAILABLE", asked
        assert "the scheduler at 127.0.0.1:" in asked["completionDetail"]
        assert "ranked by the cue as given" in asked["completionDetail"]
        assert set(asked["effectiveCue"]) == set(cue())
        assert plain["completion"] == "DISABLED"
        assert plain["completionDetail"] == "the request asked for no completion"
        assert [h["episode"]["id"] for h in asked["hits"]] == [
            h["episode"]["id"] for h in plain["hits"]
        ]
