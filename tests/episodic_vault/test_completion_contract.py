"""The vault's CueCompletion contract, run against the in-memory completer
(tests/fakes/completion.py) and the real CueCompleter over a real SleepScheduler holding a graph of
two assemblies: the same cues, the same outcomes, so the fake cannot drift from the scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from mcp_services.common.clients import ClientFactory
from mcp_services.episodic_vault.adapters.completion import CueCompleter
from mcp_services.episodic_vault.domain.completion import CompletionStatus, CueCompletion
from mcp_services.sleep_scheduler.rpc.codec import commit_chunks
from tests.conftest import SettingsFactory, free_port
from tests.episodic_vault.test_search_recall import two_assemblies
from tests.fakes.completion import FakeCompleter
from tests.sleep_scheduler.conftest import SchedulerFactory, start_scheduler  # noqa: F401

ASSEMBLIES = ([f"concept:{i}" for i in range(5)], [f"concept:{i}" for i in range(5, 10)])
Scenario = Callable[[CueCompletion], Coroutine[Any, Any, None]]
Runner = Callable[[Scenario], None]


@pytest.fixture(params=["fake", "real"])
def up(
    request: pytest.FixtureRequest,
    make_settings: SettingsFactory,
    start_scheduler: SchedulerFactory,  # noqa: F811
) -> Iterator[Runner]:
    """Runs a scenario against a completer whose scheduler holds version 1: two assemblies."""
    if request.param == "fake":
        yield lambda scenario: asyncio.run(scenario(FakeCompleter(ASSEMBLIES)))
        return
    sched = start_scheduler()
    g, protos = two_assemblies()
    chunks = commit_chunks(0, g, protos, None, "test", "two assemblies", 7)
    assert sched.stub.CommitGraph(iter(chunks)).header.version == 1
    settings = make_settings()
    yield lambda scenario: asyncio.run(_real(scenario, settings, sched.target))


@pytest.fixture(params=["fake", "real"])
def down(request: pytest.FixtureRequest, make_settings: SettingsFactory) -> Iterator[Runner]:
    """Runs a scenario against a completer whose scheduler is away (nobody at its address)."""
    address = f"127.0.0.1:{free_port()}"
    if request.param == "fake":

        def fake(scenario: Scenario) -> None:
            completer = FakeCompleter(ASSEMBLIES, address=address)
            completer.down = True
            asyncio.run(scenario(completer))

        yield fake
        return
    settings = make_settings()
    yield lambda scenario: asyncio.run(_real(scenario, settings, address))


async def _real(scenario: Scenario, settings: Any, address: str) -> None:
    clients = ClientFactory.of(settings)
    # A deadline, not a speed bar: the scheduler's first Complete compiles its kernels.
    completer = CueCompleter(
        address, 120_000, lambda target: clients.aio_channel(target=target, retries=False)
    )
    try:
        await scenario(completer)
    finally:
        await completer.close()


class TestCompletionContract:
    """What Recall relies on, identical for the fake and the scheduler."""

    def test_a_partial_cue_settles_into_its_assembly(self, up: Runner) -> None:
        """Three members of an assembly (and an active concept the graph does not know) complete
        to the whole assembly plus that concept, at the graph's version."""

        async def scenario(completer: CueCompletion) -> None:
            cue = {"concept:5": 1.0, "concept:6": 0.9, "concept:7": 0.8, "elsewhere": 0.75}
            cue["faint"] = 0.5  # not active (a concept is on above 0.5): dropped
            done = await completer.complete(cue, True)
            assert done.status == CompletionStatus.APPLIED, done.detail
            assert sorted(done.cue) == sorted([*ASSEMBLIES[1], "elsewhere"])
            assert done.cue["elsewhere"] == 0.75
            assert all(0.0 < s <= 1.0 for s in done.cue.values())
            assert done.graph_version == 1

        up(scenario)

    def test_not_wanted_is_disabled(self, up: Runner) -> None:
        """A Recall that asks for no completion gets its cue back as given."""

        async def scenario(completer: CueCompletion) -> None:
            cue = {"concept:0": 1.0}
            done = await completer.complete(cue, False)
            assert (done.status, done.cue, done.graph_version) == (
                CompletionStatus.DISABLED,
                cue,
                0,
            )

        up(scenario)

    def test_an_absent_scheduler_leaves_the_cue_as_given(self, down: Runner) -> None:
        """Nobody at the scheduler's address: UNAVAILABLE, the cue as given, the address named."""

        async def scenario(completer: CueCompletion) -> None:
            cue = {"concept:5": 1.0, "concept:6": 0.9}
            done = await completer.complete(cue, True)
            assert (done.status, done.cue) == (CompletionStatus.UNAVAILABLE, cue)
            assert "127.0.0.1:" in done.detail and "ranked by the cue as given" in done.detail

        down(scenario)
