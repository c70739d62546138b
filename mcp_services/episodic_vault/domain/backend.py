"""The storage contract every vault backend keeps (tests/episodic_vault/test_backend_contract.py).

Backends are synchronous and thread-safe; the service runs them on worker threads so the event
loop never waits on storage. Errors, drawn as a hierarchy:

    BackendError
    ├── IdConflict          an id is taken by an episode with different content
    ├── CapacityExceeded    the backend holds all it is configured to hold
    └── BackendUnavailable  the store cannot be reached (the caller may retry)

SchemaTooNew (raised at open) means the store's layout is newer than this release knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mcp_services.episodic_vault.domain.model import (
    Episode,
    EpisodeFilter,
    ListCursor,
    MarkOutcome,
    PutOutcome,
    VaultStats,
)


class BackendError(Exception):
    """Base of the errors a backend raises on purpose."""


class IdConflict(BackendError):
    def __init__(self, episode_id: str) -> None:
        super().__init__(
            f"episode id {episode_id!r} is already stored with different content; use a new id, "
            "or resend the identical episode for an idempotent put"
        )
        self.episode_id = episode_id


class CapacityExceeded(BackendError):
    pass


class BackendUnavailable(BackendError):
    pass


class SchemaTooNew(RuntimeError):
    """The store was written by a newer release; migrations never run backwards."""


class VaultBackend(Protocol):
    """Durable (or, for `memory` without a snapshot, process-lifetime) episode storage."""

    name: str

    def put_many(self, episodes: Sequence[Episode], stored_ms: int) -> list[PutOutcome]:
        """Store the episodes atomically: all of them or, on any error, none.

        An id already stored with the same content_hash is EXISTING and left as it is; with a
        different hash the whole call raises IdConflict. The same holds between two episodes of
        one call. New episodes get increasing seq numbers and stored_ms. Durable on return.
        """
        ...

    def get(self, episode_id: str) -> Episode | None: ...

    def get_many(self, episode_ids: Sequence[str]) -> dict[str, Episode]:
        """The episodes stored under these ids, by id (unknown ids are absent), in one round
        trip where the backend has them (Search and Recall fetch their hits this way)."""
        ...

    def list_recent(
        self, flt: EpisodeFilter, limit: int, after: ListCursor | None
    ) -> list[Episode]:
        """Up to `limit` matching episodes, newest first by (timestamp, seq), after `after`."""
        ...

    def scan(self, after_seq: int, limit: int, only_unconsolidated: bool) -> list[Episode]:
        """Up to `limit` episodes with seq > after_seq, in seq order."""
        ...

    def delete(self, episode_id: str) -> bool:
        """Remove the episode; False when there was none."""
        ...

    def delete_many(self, episode_ids: Sequence[str]) -> int:
        """Remove the episodes (in one transaction where the backend has them); how many were
        there. Tier pruning deletes thousands at once: one commit (one fsync) per episode would
        hold the vault's write lock for seconds."""
        ...

    def mark_consolidated(self, episode_ids: Sequence[str], graph_version: int) -> MarkOutcome:
        """Mark the episodes consolidated into `graph_version`, moving them to the LTM tier.

        Atomic and idempotent: an episode already consolidated keeps its first graph_version and
        counts as `already`; an id the store does not hold is reported in `missing` (in request
        order, once). Duplicate ids count once. Marked episodes leave scan(only_unconsolidated)
        and the TTL purge, and count as consolidated in stats().
        """
        ...

    def purge_expired(self, stored_before_ms: int, keep_ref_count: int, dry_run: bool) -> int:
        """Delete (or with dry_run count) unconsolidated episodes stored before the cutoff whose
        ref_count is below keep_ref_count; returns how many."""
        ...

    def totals(self) -> tuple[int, int]:
        """(episode count, encoded bytes), cheap enough to call after every write."""
        ...

    def stats(self) -> VaultStats: ...

    def close(self) -> None:
        """Flush and release; the backend is unusable afterwards."""
        ...
