"""The vault's domain values: plain frozen dataclasses, no protobuf.

Protos are converted to and from these at the service edge (rpc/codec.py; the stored body, which
is the proto's wire format, in adapters/body.py), so domain logic never handles `_pb2` objects.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import numpy.typing as npt


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


class Embedding:
    """An immutable float32 vector (the wire type of Episode.embedding), held as packed bytes.

    A tuple of Python floats costs 32 bytes a value (8 for the pointer, 24 for the float); this
    costs 4, which is most of what an episode held in STM or in the memory backend weighs.
    Iterates, indexes and compares like a sequence of floats; `array()` is a read-only float32
    view without a copy, and numpy converts it directly (np.asarray).
    """

    __slots__ = ("_data",)

    def __init__(self, values: npt.ArrayLike | bytes = ()) -> None:
        if isinstance(values, bytes):
            if len(values) % 4:
                raise ValueError(f"{len(values)} bytes are not a whole number of float32 values")
            self._data = values
            return
        a = np.asarray(values, dtype=np.float32)
        if a.ndim != 1:
            raise ValueError(f"an embedding is one-dimensional, not of shape {a.shape}")
        self._data = a.tobytes()

    def array(self) -> npt.NDArray[np.float32]:
        """The values as a read-only float32 array (a view of the bytes)."""
        return np.frombuffer(self._data, np.float32)

    def tobytes(self) -> bytes:
        return self._data

    def tolist(self) -> list[float]:
        return self.array().tolist()  # type: ignore[no-any-return]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> npt.NDArray[Any]:
        a = self.array()
        return a if dtype is None else a.astype(dtype)

    def __len__(self) -> int:
        return len(self._data) // 4

    def __bool__(self) -> bool:
        return bool(self._data)

    def __iter__(self) -> Iterator[float]:
        return iter(self.tolist())

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> list[float]: ...
    def __getitem__(self, i: int | slice) -> float | list[float]:
        return self.tolist()[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Embedding):
            return self._data == other._data
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"Embedding(dim={len(self)})"


NO_EMBEDDING = Embedding()


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
    # Any float sequence is accepted and stored as an Embedding (float32, like the wire).
    embedding: Embedding = NO_EMBEDDING
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

    def __post_init__(self) -> None:
        if not isinstance(self.embedding, Embedding):
            object.__setattr__(self, "embedding", Embedding(self.embedding))


class PutStatus(enum.IntEnum):
    CREATED = 1
    EXISTING = 2


@dataclass(frozen=True, slots=True)
class PutOutcome:
    id: str
    status: PutStatus
    seq: int
    content_hash: str
    # The encoded body's size, for a CREATED outcome (0 otherwise).
    size_bytes: int = 0


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
