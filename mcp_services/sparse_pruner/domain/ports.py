"""What the pruner needs from the graph's owner, the SleepScheduler: :class:`GraphSource`.

The engine and the servicer depend on this protocol, not on gRPC: the server wiring hands them a
:class:`~mcp_services.sparse_pruner.adapters.scheduler_client.SchedulerClient`, tests may hand
them an in-memory fake (tests/fakes/scheduler.py) held to the same contract. Errors::

    SchedulerError
    ├── VersionConflict      the base version is no longer the latest (FAILED_PRECONDITION)
    ├── VersionGone          no such version, e.g. dropped by retention (NOT_FOUND)
    └── SchedulerUnavailable the scheduler cannot be reached or timed out (UNAVAILABLE, ...)

Any other failure (a graph the scheduler rejects) is a plain SchedulerError carrying its message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot


class SchedulerError(Exception):
    """A call to the SleepScheduler failed; the message carries its status and text."""


class VersionConflict(SchedulerError):
    """The commit's base version is stale: re-read the latest version and recompute."""


class VersionGone(SchedulerError):
    """The requested version does not exist (never made, or dropped by retention)."""


class SchedulerUnavailable(SchedulerError):
    """The scheduler did not answer; retry later."""


@dataclass(frozen=True)
class GraphVersion:
    """The header of one stored graph version (times in ms since the epoch; 0: not known)."""

    version: int
    base_version: int = 0
    created_at_ms: int = 0
    concept_count: int = 0
    edge_count: int = 0
    author: str = ""
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


class GraphSource(Protocol):
    """The versioned graph of one namespace, as the pruner reads and commits it."""

    async def read_graph(self, version: int = 0) -> GraphSnapshot:
        """Version ``version`` (0: the latest) whole.

        Raises:
            VersionGone: no such version.
        """
        ...

    async def commit_graph(
        self,
        graph: GraphSnapshot,
        base_version: int,
        author: str,
        reason: str,
        metadata: Mapping[str, str] | None = None,
    ) -> GraphVersion:
        """Commit ``graph`` (with its prototypes) on top of ``base_version``; returns its header.

        Raises:
            VersionConflict: ``base_version`` is no longer the latest.
        """
        ...

    async def list_versions(self) -> list[GraphVersion]:
        """Headers of the retained versions, newest first."""
        ...

    async def close(self) -> None: ...
