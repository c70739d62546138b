"""The SleepScheduler's versioned graph, in memory: a :class:`GraphSource` for the pruner.

Same contract as :class:`~mcp_services.sparse_pruner.adapters.scheduler_client.SchedulerClient`
over a real scheduler (tests/sparse_pruner/test_graph_source_contract.py holds both to it):
version 0 is the empty graph, each commit must name the latest version as its base (else
VersionConflict) and keep the base's concepts first and in order (else SchedulerError), the last
``keep`` versions are retained (an older one is VersionGone), headers come newest first.

:class:`HeldCommit` wraps any source and holds its first commit until released, so a test can
land a concurrent commit at exactly that point.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from mcp_services.sparse_pruner.domain.ports import (
    GraphSource,
    GraphVersion,
    SchedulerError,
    VersionConflict,
    VersionGone,
)
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot
from tests.fakes.gate import Held


class FakeScheduler:
    """Graph versions of one namespace in memory (``keep``: how many are retained)."""

    def __init__(self, keep: int = 10) -> None:
        self.keep = keep
        self._versions: dict[int, GraphSnapshot] = {}
        self._headers: dict[int, GraphVersion] = {}
        self._latest = 0
        self.closed = False

    async def read_graph(self, version: int = 0) -> GraphSnapshot:
        want = self._latest if version == 0 else version
        if want == 0:
            return GraphSnapshot(0, (), sp.csr_matrix((0, 0)), np.zeros(0))
        if want not in self._versions:
            kept = sorted(self._versions)
            span = f"{kept[0]}..{kept[-1]}" if kept else "none yet"
            raise VersionGone(f"graph version {want} does not exist or was dropped ({span})")
        return self._versions[want]

    async def commit_graph(
        self,
        graph: GraphSnapshot,
        base_version: int,
        author: str,
        reason: str,
        metadata: Mapping[str, str] | None = None,
    ) -> GraphVersion:
        if base_version != self._latest:
            raise VersionConflict(
                f"base_version {base_version} is not the latest graph version ({self._latest})"
            )
        base = await self.read_graph(0)
        if graph.concept_ids[: base.n_concepts] != base.concept_ids:
            raise SchedulerError(
                "concept_ids must start with the base version's concepts in the same order"
            )
        version = self._latest + 1
        header = GraphVersion(
            version=version,
            base_version=base_version,
            created_at_ms=time.time_ns() // 1_000_000,
            concept_count=graph.n_concepts,
            edge_count=graph.edge_count,
            author=author or "unspecified",
            reason=reason,
            metadata=dict(metadata or {}),
        )
        self._versions[version] = replace(
            graph,
            version=version,
            created_at_ms=header.created_at_ms,
            author=header.author,
            reason=reason,
            metadata=dict(header.metadata),
        )
        self._headers[version] = header
        self._latest = version
        for old in sorted(self._versions)[: -self.keep]:
            del self._versions[old], self._headers[old]
        return header

    async def list_versions(self) -> list[GraphVersion]:
        return [self._headers[v] for v in sorted(self._headers, reverse=True)]

    async def close(self) -> None:
        self.closed = True


class HeldCommit(Held[GraphSource]):
    """``source`` with its first commit held: :attr:`arrived` is set when that commit is called,
    and it goes on to ``source`` only after :meth:`release`. Later commits pass straight through.
    """

    held = "commit_graph"

    async def read_graph(self, version: int = 0) -> GraphSnapshot:
        if self.held == "read_graph":
            await self.passage()
        return await self.source.read_graph(version)

    async def commit_graph(
        self,
        graph: GraphSnapshot,
        base_version: int,
        author: str,
        reason: str,
        metadata: Mapping[str, str] | None = None,
    ) -> GraphVersion:
        if self.held == "commit_graph":
            await self.passage()
        return await self.source.commit_graph(graph, base_version, author, reason, metadata)

    async def list_versions(self) -> list[GraphVersion]:
        return await self.source.list_versions()

    async def close(self) -> None:
        await self.source.close()


class HeldRead(HeldCommit):
    """``source`` with its first read held instead: a pruning job waits there, started and
    before any solve, for as long as the test needs."""

    held = "read_graph"
