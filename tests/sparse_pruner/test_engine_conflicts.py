"""The pruning engine's conflict handling over the in-memory scheduler (tests/fakes/scheduler.py):
the interleavings are forced, so each test sees exactly the conflicts it names. The same path
against a real scheduler is test_service.py's test_concurrent_commit_is_detected_and_recomputed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from mcp_services.common.jobs import JobState
from mcp_services.common.namespaces import quiet_bus
from mcp_services.sparse_pruner.adapters.backups import BackupStore
from mcp_services.sparse_pruner.domain.knobs import RunOverrides
from mcp_services.sparse_pruner.domain.ports import GraphSource, GraphVersion
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot
from mcp_services.sparse_pruner.engine import PruningEngine
from mcp_services.sparse_pruner.metrics import PrunerMetrics
from tests.conftest import SettingsFactory
from tests.fakes.gate import HOLD_GUARD_S
from tests.fakes.scheduler import FakeScheduler, HeldCommit

from .conftest import planted_snapshot


def _engine(source: GraphSource, settings_of: SettingsFactory, backups: Path) -> PruningEngine:
    settings = settings_of()
    cfg = settings.sparse_pruner
    return PruningEngine(
        cfg,
        source,
        BackupStore(backups, cfg.backup_retention),
        PrunerMetrics(CollectorRegistry()),
        quiet_bus(settings, "sparse-pruner"),
        growth_min_window_s=cfg.growth_min_window_s,
        auto_tune_cooldown_s=cfg.auto_tune_cooldown_s,
    )


def _nudged(graph: GraphSnapshot, factor: float) -> GraphSnapshot:
    """``graph`` as consolidation might rewrite it: same edges, biases scaled."""
    return replace(graph, version=0, biases=graph.biases * factor)


class ConsolidationBeforeEveryPrune(FakeScheduler):
    """A scheduler where consolidation always commits just before the pruner does: every
    pruner commit is on a stale base."""

    async def commit_graph(
        self,
        graph: GraphSnapshot,
        base_version: int,
        author: str,
        reason: str,
        metadata: Mapping[str, str] | None = None,
    ) -> GraphVersion:
        if author == "pruner":
            latest = await self.read_graph(0)
            await super().commit_graph(_nudged(latest, 1.01), latest.version, "consolidation", "")
        return await super().commit_graph(graph, base_version, author, reason, metadata)


class TestConflicts:
    """A stale commit is never kept: the engine re-reads, recomputes, or gives up by its knob."""

    def test_one_concurrent_commit_costs_one_recompute(
        self, make_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        """Consolidation commits v2 while the pruner's commit on v1 is held: that commit
        conflicts, its backup goes, and the pruner commits v3 computed from v2."""
        graph, _ = planted_snapshot(120, 0.1, seed=8)

        async def main() -> None:
            fake = FakeScheduler()
            held = HeldCommit(fake)
            engine = _engine(held, make_settings, tmp_path)
            try:
                await fake.commit_graph(graph, 0, "consolidation", "")
                job = engine.submit("rpc", False, RunOverrides())
                assert await asyncio.to_thread(held.arrived.wait, HOLD_GUARD_S)
                assert job.base_version == 1
                await fake.commit_graph(_nudged(graph, 1.01), 1, "consolidation", "")
                held.release()
                await engine.wait(job)
            finally:
                await engine.close()
            assert job.state == JobState.SUCCEEDED, job.message
            assert (job.conflict_retries, job.base_version, job.committed_version) == (1, 2, 3)
            assert engine.counts["conflicts"] == 1
            assert [(b.graph_version, b.pruned_version) for b in engine.backups.list()] == [(2, 3)]
            pruned = await fake.read_graph(3)
            assert pruned.author == "pruner"
            # Computed from v2: exactly what pruning v2 gives with no one interfering.
            alone = FakeScheduler()
            for version in (1, 2):
                await alone.commit_graph(await fake.read_graph(version), version - 1, "c", "")
            quiet = _engine(alone, make_settings, tmp_path / "alone")
            try:
                done = await quiet.wait(quiet.submit("rpc", False, RunOverrides()))
                assert done.state == JobState.SUCCEEDED, done.message
            finally:
                await quiet.close()
            expected = await alone.read_graph(3)
            np.testing.assert_array_equal(pruned.biases, expected.biases)
            assert abs(pruned.weights - expected.weights).max() == 0.0
            assert not np.array_equal(pruned.biases, (await fake.read_graph(1)).biases)

        asyncio.run(main())

    def test_gives_up_after_max_conflict_retries(
        self, make_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        """When every commit is stale the job fails after max_conflict_retries retries, naming
        the knob, with no backup left and no version of its own."""
        graph, _ = planted_snapshot(80, 0.1, seed=9)

        async def main() -> None:
            fake = ConsolidationBeforeEveryPrune()
            engine = _engine(fake, make_settings, tmp_path)
            retries = engine.knobs.max_conflict_retries
            try:
                await fake.commit_graph(graph, 0, "consolidation", "")
                job = await engine.wait(engine.submit("rpc", False, RunOverrides()))
            finally:
                await engine.close()
            assert job.state == JobState.FAILED
            assert f"max_conflict_retries={retries}" in job.message
            assert job.conflict_retries == retries + 1
            assert engine.backups.list() == []
            authors = {h.author for h in await fake.list_versions()}
            assert authors == {"consolidation"}
            assert (await fake.read_graph(0)).version == 1 + retries + 1

        asyncio.run(main())
