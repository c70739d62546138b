"""The EpisodicVault's unconsolidated episodes, in memory: an :class:`EpisodeSource` for the
scheduler.

Same contract as :class:`~mcp_services.sleep_scheduler.adapters.vault_client.VaultClient` over a real
vault (tests/sleep_scheduler/test_episode_source_contract.py holds both to it): :meth:`put` gives
each new id the next seq and is idempotent (the same id with the same content again stores
nothing; with other content it is refused), a selection reads unconsolidated episodes in seq
order through the client's own filter (vault_client.take), a mark counts only episodes it newly
marks (unknown, repeated or already marked ids count nothing) and takes them out of the backlog.
With :attr:`down` set every call is VaultUnavailable, as when the vault is away.

:class:`HeldSelect` wraps any source and holds its first selection until released, so a test
knows a consolidation is running (it holds the lease) for as long as it needs.
"""

from __future__ import annotations

import time

from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from mcp_services.sleep_scheduler.adapters.vault_client import take
from mcp_services.sleep_scheduler.ports import (
    EpisodeBatch,
    EpisodeSource,
    Selection,
    VaultUnavailable,
)
from tests.fakes.gate import Held


class IdConflict(Exception):
    """An id was stored again with other content (the vault answers ALREADY_EXISTS)."""


class FakeVault:
    """Episodes of one namespace in memory, keyed by id, in seq order."""

    target = "fake-vault"

    def __init__(self) -> None:
        self._episodes: dict[str, episodic_pb2.Episode] = {}
        self._content: dict[str, bytes] = {}
        self.graph_version: dict[str, int] = {}  # id -> the version it was consolidated into
        self.down = False
        self.closed = False
        self.marks = 0  # mark calls that reached the vault

    def put(self, *episodes: episodic_pb2.Episode) -> int:
        """Store ``episodes`` (each with its id); returns how many were new."""
        created = 0
        for ep in episodes:
            if not ep.id:
                raise ValueError("a fake vault episode needs its id")
            content = ep.SerializeToString(deterministic=True)
            if ep.id in self._content:
                if self._content[ep.id] != content:
                    raise IdConflict(f"episode {ep.id} exists with other content")
                continue
            stored = episodic_pb2.Episode()
            stored.CopyFrom(ep)
            stored.seq = len(self._episodes) + 1
            self._episodes[ep.id] = stored
            self._content[ep.id] = content
            created += 1
        return created

    def _check(self, call: str) -> None:
        if self.down:
            raise VaultUnavailable(f"vault {self.target} {call} failed: it is down")

    async def unconsolidated(self) -> int:
        self._check("GetStats")
        return sum(1 for i in self._episodes if i not in self.graph_version)

    async def select(self, selection: Selection) -> EpisodeBatch:
        self._check("Scan")
        out = EpisodeBatch()
        now_ms = time.time_ns() // 1_000_000
        for ep in self._episodes.values():  # insertion order is seq order
            if ep.id not in self.graph_version and take(out, ep, selection, now_ms):
                break
        return out

    async def mark(self, ids: list[str], graph_version: int) -> int:
        self._check("MarkConsolidated")
        self.marks += 1
        marked = 0
        for i in dict.fromkeys(ids):
            if i in self._episodes and i not in self.graph_version:
                self.graph_version[i] = graph_version
                marked += 1
        return marked

    async def close(self) -> None:
        self.closed = True


class HeldSelect(Held[EpisodeSource]):
    """``source`` with its first :meth:`select` held until :meth:`release` (the source may be
    given later, by :meth:`around`: e.g. ``wrap_vault=held.around`` in a fixture)."""

    async def unconsolidated(self) -> int:
        return await self.source.unconsolidated()

    async def select(self, selection: Selection) -> EpisodeBatch:
        await self.passage()
        return await self.source.select(selection)

    async def mark(self, ids: list[str], graph_version: int) -> int:
        return await self.source.mark(ids, graph_version)

    async def close(self) -> None:
        await self.source.close()
