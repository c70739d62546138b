"""The scheduler's EpisodeSource contract, run against the in-memory vault (tests/fakes/vault.py)
and the real VaultClient over a real (memory-backed) vault: the same scenario, the same answers,
so the fake the deterministic consolidation tests use cannot drift from the vault."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import grpc
import pytest

from mcp_services.common.clients import ClientFactory
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.sleep_scheduler.adapters.vault_client import VaultClient
from mcp_services.sleep_scheduler.ports import EpisodeSource, Selection
from tests.conftest import SettingsFactory
from tests.fakes.vault import FakeVault, IdConflict

Put = Callable[..., Coroutine[Any, Any, int]]
Scenario = Callable[[EpisodeSource, Put], Coroutine[Any, Any, None]]
Runner = Callable[[Scenario], None]


@pytest.fixture(params=["fake", "real"])
def run_against(request: pytest.FixtureRequest, make_settings: SettingsFactory) -> Iterator[Runner]:
    """Runs a scenario against a fresh fake, or a real client of a fresh real vault; ``put``
    stores episodes on that side (IdConflict for an id stored with other content)."""
    if request.param == "fake":

        def fake(scenario: Scenario) -> None:
            vault = FakeVault()

            async def put(*episodes: episodic_pb2.Episode) -> int:
                return vault.put(*episodes)

            asyncio.run(scenario(vault, put))

        yield fake
        return
    settings = make_settings(vault={"backend": "memory", "embedding_dim": 8})
    with ServerThread("episodic-vault", "episodic_vault", VaultService, settings) as server:
        target = f"127.0.0.1:{server.running.grpc_port}"

        def real(scenario: Scenario) -> None:
            async def main() -> None:
                channel = ClientFactory.of(settings).aio_channel(target=target)
                stub = episodic_pb2_grpc.EpisodicVaultStub(channel)

                async def put(*episodes: episodic_pb2.Episode) -> int:
                    reqs = [episodic_pb2.PutEpisodeRequest(episode=ep) for ep in episodes]
                    try:
                        resp = await stub.PutEpisodes(iter(reqs), timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                            raise IdConflict(exc.details()) from exc
                        raise
                    return int(resp.created)

                client = VaultClient(channel, target, timeout_s=30.0)
                try:
                    await scenario(client, put)
                finally:
                    await client.close()

            asyncio.run(main())

        yield real


def episode(
    eid: str,
    active: tuple[str, ...] = ("concept:a", "concept:b"),
    strength: float = 1.0,
    tags: tuple[str, ...] = (),
    energy: float = 0.0,
    age_s: float = 0.0,
) -> episodic_pb2.Episode:
    ep = episodic_pb2.Episode(
        id=eid,
        source=episodic_pb2.Source(type="test"),
        activation=episodic_pb2.ConceptActivation(
            concept_ids=list(active), strengths=[strength] * len(active)
        ),
        tags=list(tags),
        energy=energy,
    )
    ep.timestamp.FromMilliseconds(time.time_ns() // 1_000_000 - int(age_s * 1000))
    return ep


class TestEpisodeSourceContract:
    """What a consolidation cycle relies on, identical for the fake and the vault."""

    def test_order_and_idempotent_puts(self, run_against: Runner) -> None:
        """Episodes come back in the order they were stored; storing one again adds nothing;
        the same id with other content is refused."""

        async def scenario(source: EpisodeSource, put: Put) -> None:
            a = episode("a")
            assert await put(episode("b"), a, episode("c")) == 3
            assert await put(a) == 0
            with pytest.raises(IdConflict):
                await put(episode("a", active=("concept:z",)))
            assert await source.unconsolidated() == 3
            batch = await source.select(Selection())
            assert batch.ids == ["b", "a", "c"]
            assert [a.active_ids() for a in batch.activations] == [("concept:a", "concept:b")] * 3
            assert batch.inactive == [] and batch.last_seq >= 3

        run_against(scenario)

    def test_selection_filters_and_limits(self, run_against: Runner) -> None:
        """Tags, energy and age filter; max_episodes stops at that many active episodes, oldest
        first; episodes with nothing active are listed apart, to be marked with the rest."""

        async def scenario(source: EpisodeSource, put: Put) -> None:
            await put(
                episode("old", age_s=3600.0),
                episode("tagged", tags=("work", "x")),
                episode("hot", energy=0.75),
                episode("faint", strength=0.25),
                episode("last"),
            )
            assert (await source.select(Selection(tags=("work",)))).ids == ["tagged"]
            assert (await source.select(Selection(min_energy=0.5))).ids == ["hot"]
            assert (await source.select(Selection(min_age_s=60.0))).ids == ["old"]
            assert "old" not in (await source.select(Selection(max_age_s=60.0))).ids
            everything = await source.select(Selection())
            assert everything.ids == ["old", "tagged", "hot", "last"]
            assert everything.inactive == ["faint"]
            first_two = await source.select(Selection(max_episodes=2))
            assert first_two.ids == ["old", "tagged"] and first_two.inactive == []

        run_against(scenario)

    def test_marks_count_once_and_leave_the_backlog(self, run_against: Runner) -> None:
        """A mark counts the episodes it newly marks (unknown, repeated and already marked ids
        count nothing); marked episodes are no longer selected or counted."""

        async def scenario(source: EpisodeSource, put: Put) -> None:
            a = episode("a")
            await put(a, episode("b"), episode("c"))
            assert await source.mark(["a", "a", "nope"], 1) == 1
            assert await source.mark(["a", "b"], 2) == 1
            assert await source.mark([], 2) == 0
            assert await source.unconsolidated() == 1
            assert (await source.select(Selection())).ids == ["c"]
            assert await put(a) == 0  # marked, still stored: an idempotent put

        run_against(scenario)
