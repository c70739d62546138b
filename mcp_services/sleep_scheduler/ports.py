"""What the scheduler needs from the EpisodicVault: :class:`EpisodeSource`.

The consolidator and the pressure watch (schedule.py) depend on this protocol, not on gRPC: the
server wiring hands them a
:class:`~mcp_services.sleep_scheduler.adapters.vault_client.VaultClient`, tests may hand them the
in-memory vault of tests/fakes/vault.py, held to the same contract
(tests/sleep_scheduler/test_episode_source_contract.py). Every failure to reach or use the vault
is :class:`VaultUnavailable`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from mcp_services.common.errors import InputError
from mcp_services.sleep_scheduler.domain import ConceptActivation


class VaultUnavailable(Exception):
    """The vault could not be reached or refused a call; the message says which and why."""


@dataclass(frozen=True)
class Selection:
    """Which unconsolidated episodes a cycle takes (filters combine with AND)."""

    min_age_s: float = 0.0
    max_age_s: float = 0.0
    tags: tuple[str, ...] = ()
    min_energy: float = 0.0
    max_episodes: int = 100_000

    def __post_init__(self) -> None:
        if self.min_age_s < 0 or self.max_age_s < 0:
            raise InputError("selection.min_age_s and max_age_s must be >= 0 (0: no bound)")
        if self.max_age_s and self.max_age_s < self.min_age_s:
            raise InputError("selection.max_age_s must be >= min_age_s (or 0: no bound)")
        if self.max_episodes < 1:
            raise InputError("selection.max_episodes must be >= 1")
        if any(not t for t in self.tags):
            raise InputError("selection.tags holds an empty tag: list non-empty tags")

    def accepts(self, age_s: float, energy: float, tags: Collection[str]) -> bool:
        """Whether an episode ``age_s`` old with ``energy`` and ``tags`` passes the filters."""
        if age_s < self.min_age_s or (self.max_age_s and age_s > self.max_age_s):
            return False
        if energy < self.min_energy:
            return False
        return not self.tags or set(self.tags).issubset(tags)


@dataclass
class EpisodeBatch:
    """The episodes of one cycle: ids and their activations, in vault order."""

    ids: list[str] = field(default_factory=list)
    # Selected episodes with no active concept (every strength <= 0.5): nothing to learn from,
    # but read by the cycle, so they are marked with the rest and stop counting as backlog.
    inactive: list[str] = field(default_factory=list)
    activations: list[ConceptActivation] = field(default_factory=list)
    last_seq: int = 0


class EpisodeSource(Protocol):
    """The unconsolidated episodes of one namespace, as a consolidation cycle reads and marks
    them. Every method raises :class:`VaultUnavailable` when the vault cannot answer."""

    async def unconsolidated(self) -> int:
        """How many episodes are held unconsolidated."""
        ...

    async def select(self, selection: Selection) -> EpisodeBatch:
        """The unconsolidated episodes ``selection`` takes, oldest (lowest seq) first."""
        ...

    async def mark(self, ids: list[str], graph_version: int) -> int:
        """Mark ``ids`` consolidated into ``graph_version``; returns how many were newly marked
        (an id already marked, unknown, or listed twice counts once or not at all)."""
        ...

    async def close(self) -> None: ...
