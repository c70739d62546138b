"""The vault's domain values: plain frozen dataclasses, no protobuf.

Protos are converted to and from these at the service edge (codec.py), so backends and domain logic
never handle `_pb2` objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Tier(enum.IntEnum):
    """Storage tier; values match tori.episodic.v1.Tier."""

    UNSPECIFIED = 0
    STM = 1
    MTM = 2
    LTM = 3


@dataclass(frozen=True, slots=True)
class ConceptActivation:
    """Parallel tuples: concept_ids[i] has strengths[i] (0..1) and, if present, phases[i] (rad)."""

    concept_ids: tuple[str, ...] = ()
    strengths: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Frame:
    offset_ms: int
    activation: ConceptActivation


@dataclass(frozen=True, slots=True)
class Source:
    type: str = ""
    id: str = ""
    user: str = ""


@dataclass(frozen=True, slots=True)
class Episode:
    """An episode as stored. The fields after `metadata` are the server's."""

    id: str
    timestamp_ms: int
    tags: tuple[str, ...] = ()
    source: Source = Source()
    energy: float = 0.0
    ref_count: int = 0
    activation: ConceptActivation = ConceptActivation()
    trace: tuple[Frame, ...] = ()
    payload: bytes = b""
    embedding: tuple[float, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()  # sorted by key
    # Server-side state.
    tier: Tier = Tier.MTM
    consolidated: bool = False
    stored_ms: int = 0
    seq: int = 0
    content_hash: str = ""
    # Encoded size in bytes, as counted in the vault's size statistics.
    size_bytes: int = 0
    # The graph version the episode was consolidated into; 0 while unconsolidated.
    graph_version: int = 0


class PutStatus(enum.IntEnum):
    CREATED = 1
    EXISTING = 2


@dataclass(frozen=True, slots=True)
class PutOutcome:
    id: str
    status: PutStatus
    seq: int
    content_hash: str


@dataclass(frozen=True, slots=True)
class MarkOutcome:
    """What mark_consolidated did: newly marked, already consolidated, and unknown ids."""

    marked: int
    already: int
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EpisodeFilter:
    """Matches episodes carrying all `tags`, with since_ms <= timestamp < until_ms, etc."""

    tags: tuple[str, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None
    source_type: str = ""
    min_energy: float = 0.0


@dataclass(frozen=True, slots=True)
class ListCursor:
    """Position after a page's last episode; newest first means (timestamp, seq) descending."""

    timestamp_ms: int
    seq: int


@dataclass(frozen=True, slots=True)
class TierCount:
    tier: Tier
    episode_count: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class VaultStats:
    episode_count: int
    size_bytes: int
    consolidated_count: int
    last_seq: int
    oldest_ms: int | None
    newest_ms: int | None
    tiers: tuple[TierCount, ...] = field(default_factory=tuple)

    @property
    def unconsolidated_count(self) -> int:
        return self.episode_count - self.consolidated_count
