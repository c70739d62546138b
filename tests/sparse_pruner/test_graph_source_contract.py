"""The pruner's GraphSource contract, run against the in-memory fake (tests/fakes/scheduler.py)
and the real SchedulerClient over a real SleepScheduler: the same scenario, the same answers, so
the fake the deterministic tests use cannot drift from the scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.common.clients import ClientFactory
from mcp_services.common.server import ServerThread
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from mcp_services.sparse_pruner.adapters.scheduler_client import SchedulerClient
from mcp_services.sparse_pruner.domain.ports import (
    GraphSource,
    SchedulerError,
    VersionConflict,
    VersionGone,
)
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot
from tests.conftest import SettingsFactory
from tests.fakes.scheduler import FakeScheduler

from .conftest import planted_snapshot

KEEP = 3  # versions retained, by both sides (sleep_scheduler.keep_versions)
Scenario = Callable[[GraphSource], Coroutine[Any, Any, None]]
Runner = Callable[[Scenario], None]


@pytest.fixture(params=["fake", "real"])
def run_against(request: pytest.FixtureRequest, make_settings: SettingsFactory) -> Iterator[Runner]:
    """Runs a scenario against a fresh fake, or a real client of a fresh real scheduler."""
    if request.param == "fake":

        def fake(scenario: Scenario) -> None:
            asyncio.run(scenario(FakeScheduler(keep=KEEP)))

        yield fake
        return
    settings = make_settings(sleep_scheduler={"keep_versions": KEEP})
    with ServerThread(
        "sleep-scheduler", "sleep_scheduler", SleepSchedulerService, settings
    ) as server:
        target = f"127.0.0.1:{server.running.grpc_port}"

        def real(scenario: Scenario) -> None:
            async def main() -> None:
                channel = ClientFactory.of(settings).aio_channel(target=target)
                client = SchedulerClient(channel, target, timeout_s=30.0)
                try:
                    await scenario(client)
                finally:
                    await client.close()

            asyncio.run(main())

        yield real


def _same_graph(a: GraphSnapshot, b: GraphSnapshot) -> None:
    assert a.concept_ids == b.concept_ids
    np.testing.assert_allclose(a.biases, b.biases)
    for x, y in zip(a.upper_edges(), b.upper_edges(), strict=True):
        np.testing.assert_allclose(x, y)
    assert [p.tolist() for p in a.prototypes] == [p.tolist() for p in b.prototypes]
    assert a.support == b.support


def _grown(graph: GraphSnapshot, extra: str) -> GraphSnapshot:
    """``graph`` with one more concept, unconnected."""
    n = graph.n_concepts
    w = graph.weights
    indptr = np.append(w.indptr, w.indptr[-1])
    return GraphSnapshot(
        0,
        (*graph.concept_ids, extra),
        sp.csr_matrix((w.data, w.indices, indptr), shape=(n + 1, n + 1)),
        np.append(graph.biases, 0.5),
        graph.prototypes,
        graph.support,
    )


class TestGraphSourceContract:
    """What the pruner relies on, identical for the fake and the scheduler."""

    def test_empty_graph_is_version_zero(self, run_against: Runner) -> None:
        """Before any commit the latest is the empty version 0 and no version is listed."""

        async def scenario(source: GraphSource) -> None:
            empty = await source.read_graph(0)
            assert (empty.version, empty.n_concepts, empty.edge_count) == (0, 0, 0)
            assert await source.list_versions() == []

        run_against(scenario)

    def test_commit_then_read_back(self, run_against: Runner) -> None:
        """A commit on the latest version makes the next one, with its header, read back whole."""
        graph, _ = planted_snapshot(40, 0.1, seed=1)

        async def scenario(source: GraphSource) -> None:
            header = await source.commit_graph(graph, 0, "test", "seed", {"k": "v"})
            assert (header.version, header.base_version) == (1, 0)
            assert (header.concept_count, header.edge_count) == (40, graph.edge_count)
            assert (header.author, header.reason, dict(header.metadata)) == (
                "test",
                "seed",
                {"k": "v"},
            )
            assert header.created_at_ms > 0
            back = await source.read_graph(0)
            assert (back.version, back.author, back.reason) == (1, "test", "seed")
            assert back.created_at_ms == header.created_at_ms
            _same_graph(back, graph)
            by_number = await source.read_graph(1)
            assert by_number.version == 1
            _same_graph(by_number, graph)

        run_against(scenario)

    def test_stale_base_is_a_conflict(self, run_against: Runner) -> None:
        """A commit on a base that is no longer the latest is VersionConflict and stores nothing."""
        graph, _ = planted_snapshot(30, 0.1, seed=2)

        async def scenario(source: GraphSource) -> None:
            await source.commit_graph(graph, 0, "a", "")
            await source.commit_graph(graph, 1, "b", "")
            with pytest.raises(VersionConflict):
                await source.commit_graph(graph, 1, "stale", "")
            with pytest.raises(VersionConflict):
                await source.commit_graph(graph, 5, "ahead", "")
            assert [h.version for h in await source.list_versions()] == [2, 1]
            assert [h.base_version for h in await source.list_versions()] == [1, 0]

        run_against(scenario)

    def test_concepts_must_extend_the_base(self, run_against: Runner) -> None:
        """Dropping or reordering the base's concepts is refused (a SchedulerError that is not a
        conflict); appending concepts is accepted."""
        graph, _ = planted_snapshot(30, 0.1, seed=3)

        async def scenario(source: GraphSource) -> None:
            await source.commit_graph(graph, 0, "a", "")
            shuffled = GraphSnapshot(
                0, tuple(reversed(graph.concept_ids)), graph.weights, graph.biases
            )
            with pytest.raises(SchedulerError) as err:
                await source.commit_graph(shuffled, 1, "bad", "")
            assert not isinstance(err.value, VersionConflict)
            header = await source.commit_graph(_grown(graph, "concept:new"), 1, "grow", "")
            assert (header.version, header.concept_count) == (2, 31)

        run_against(scenario)

    def test_retention_and_missing_versions(self, run_against: Runner) -> None:
        """Only the last KEEP versions are kept; an older or unknown one is VersionGone."""
        graph, _ = planted_snapshot(20, 0.1, seed=4)

        async def scenario(source: GraphSource) -> None:
            for base in range(KEEP + 2):
                await source.commit_graph(graph, base, "a", f"v{base + 1}")
            listed = [h.version for h in await source.list_versions()]
            assert listed == [KEEP + 2, KEEP + 1, KEEP]
            assert (await source.read_graph(KEEP)).reason == f"v{KEEP}"
            for gone in (1, 99):
                with pytest.raises(VersionGone):
                    await source.read_graph(gone)

        run_against(scenario)
