"""In-memory backend, with an optional snapshot file: for tests and tiny set-ups.

Without a snapshot file nothing outlives the process. With one, the store is written atomically
(temporary file, fsync, rename) every snapshot_interval_s when it changed, and on close, and read
back at start: a process killed between snapshots loses the puts made since the last one.

Snapshot format: b"TORIVLT1", the last issued seq (8 bytes, big-endian), then one record per
episode: a 4-byte big-endian length and the episode's proto (server fields included).
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import structlog

from mcp_services.common.periodic import PeriodicThread
from mcp_services.episodic_vault.adapters.body import (
    decode_body,
    decode_record,
    encode_body,
    encode_record,
)
from mcp_services.episodic_vault.domain.backend import CapacityExceeded, IdConflict
from mcp_services.episodic_vault.domain.disk_full import space_note
from mcp_services.episodic_vault.domain.model import (
    Episode,
    EpisodeFilter,
    ListCursor,
    MarkOutcome,
    PutOutcome,
    PutStatus,
    Tier,
    TierCount,
    VaultStats,
)
from mcp_services.episodic_vault.settings import MemoryConfig

log = structlog.get_logger(__name__)

MAGIC = b"TORIVLT1"


class SnapshotCorrupt(RuntimeError):
    pass


def _matches(ep: Episode, flt: EpisodeFilter) -> bool:
    return (
        (flt.since_ms is None or ep.timestamp_ms >= flt.since_ms)
        and (flt.until_ms is None or ep.timestamp_ms < flt.until_ms)
        and (not flt.source_type or ep.source.type == flt.source_type)
        and ep.energy >= flt.min_energy
        and all(t in ep.tags for t in flt.tags)
    )


class MemoryBackend:
    name = "memory"

    def __init__(self, cfg: MemoryConfig, snapshot_path: Path | None) -> None:
        self._cfg = cfg
        self._path = snapshot_path
        self._lock = threading.RLock()
        self._by_id: dict[str, Episode] = {}
        self._by_seq: dict[int, Episode] = {}  # insertion order is seq order
        self._recent: list[tuple[int, int]] = []  # sorted (timestamp_ms, seq)
        self._last_seq = 0
        self._bytes = 0
        self._dirty = False
        self._closed = threading.Event()
        self._snapshotter: PeriodicThread | None = None
        if self._path is not None:
            self._load()
            self._snapshotter = PeriodicThread(
                "vault-snapshot", self.snapshot, self._cfg.snapshot_interval_s
            )
            self._snapshotter.start()

    # -- persistence -------------------------------------------------------------------------
    def _load(self) -> None:
        assert self._path is not None
        if not self._path.exists():
            return
        data = self._path.read_bytes()
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
            raise SnapshotCorrupt(
                f"{self._path} is not a vault snapshot; move it away to start empty"
            )
        pos = len(MAGIC)
        (last_seq,) = struct.unpack_from(">Q", data, pos)
        pos += 8
        while pos < len(data):
            if pos + 4 > len(data):
                raise SnapshotCorrupt(f"{self._path} is truncated at byte {pos}")
            (n,) = struct.unpack_from(">I", data, pos)
            pos += 4
            if pos + n > len(data):
                raise SnapshotCorrupt(f"{self._path} is truncated at byte {pos}")
            self._insert(decode_record(data[pos : pos + n]))
            pos += n
        self._last_seq = max(self._last_seq, last_seq)

    def snapshot(self) -> None:
        """Write the store to the snapshot file atomically (no-op without a file or changes)."""
        if self._path is None:
            return
        with self._lock:
            if not self._dirty:
                return
            records = [encode_record(ep) for ep in self._by_seq.values()]
            header = MAGIC + struct.pack(">Q", self._last_seq)
            self._dirty = False
        tmp = self._path.with_suffix(self._path.suffix + ".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(header)
                for rec in records:
                    f.write(struct.pack(">I", len(rec)))
                    f.write(rec)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except OSError as exc:
            # A full disk must not end the process: the previous snapshot stays, and the next
            # attempt (interval or close) writes again.
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._dirty = True
            log.warning(
                "vault_snapshot_failed",
                path=str(self._path),
                free=space_note(self._path.parent),
                error=str(exc),
                consequence="puts since the last snapshot are kept in memory only",
            )

    # -- contract ----------------------------------------------------------------------------
    def _insert(self, ep: Episode) -> None:
        self._by_id[ep.id] = ep
        self._by_seq[ep.seq] = ep
        bisect.insort(self._recent, (ep.timestamp_ms, ep.seq))
        self._last_seq = max(self._last_seq, ep.seq)
        self._bytes += ep.size_bytes

    def _remove(self, ep: Episode) -> None:
        del self._by_id[ep.id]
        del self._by_seq[ep.seq]
        i = bisect.bisect_left(self._recent, (ep.timestamp_ms, ep.seq))
        del self._recent[i]
        self._bytes -= ep.size_bytes

    def put_many(self, episodes: Sequence[Episode], stored_ms: int) -> list[PutOutcome]:
        with self._lock:
            outcomes: list[PutOutcome] = []
            new: dict[str, Episode] = {}
            next_seq = self._last_seq
            for ep in episodes:
                prior = new.get(ep.id) or self._by_id.get(ep.id)
                if prior is not None:
                    if prior.content_hash != ep.content_hash:
                        raise IdConflict(ep.id)
                    outcomes.append(
                        PutOutcome(ep.id, PutStatus.EXISTING, prior.seq, prior.content_hash)
                    )
                    continue
                next_seq += 1
                # Through the wire format, like every other backend: what reads back is what
                # the encoding holds (float32 strengths, sorted metadata), and its size counts.
                stored = decode_body(
                    encode_body(ep),
                    ref_count=ep.ref_count,
                    tier=int(ep.tier),
                    consolidated=ep.consolidated,
                    stored_ms=stored_ms,
                    seq=next_seq,
                    content_hash=ep.content_hash,
                )
                new[ep.id] = stored
                outcomes.append(
                    PutOutcome(
                        ep.id, PutStatus.CREATED, next_seq, ep.content_hash, stored.size_bytes
                    )
                )
            cap = self._cfg.capacity
            if cap and len(self._by_id) + len(new) > cap:
                raise CapacityExceeded(
                    f"the memory backend holds {len(self._by_id)} of its {cap} episodes "
                    f"(vault.memory.capacity); {len(new)} more do not fit: purge, raise the "
                    "capacity, or use a durable backend"
                )
            for stored in new.values():
                self._insert(stored)
            if new:
                self._dirty = True
            return outcomes

    def get(self, episode_id: str) -> Episode | None:
        with self._lock:
            return self._by_id.get(episode_id)

    def get_many(self, episode_ids: Sequence[str]) -> dict[str, Episode]:
        with self._lock:
            return {i: self._by_id[i] for i in episode_ids if i in self._by_id}

    def list_recent(
        self, flt: EpisodeFilter, limit: int, after: ListCursor | None
    ) -> list[Episode]:
        with self._lock:
            end = len(self._recent)
            if after is not None:
                end = bisect.bisect_left(self._recent, (after.timestamp_ms, after.seq))
            out: list[Episode] = []
            for i in range(end - 1, -1, -1):
                ep = self._by_seq[self._recent[i][1]]
                if _matches(ep, flt):
                    out.append(ep)
                    if len(out) >= limit:
                        break
            return out

    def scan(self, after_seq: int, limit: int, only_unconsolidated: bool) -> list[Episode]:
        with self._lock:
            out: list[Episode] = []
            for seq, ep in self._by_seq.items():
                if seq > after_seq and not (only_unconsolidated and ep.consolidated):
                    out.append(ep)
                    if len(out) >= limit:
                        break
            return out

    def delete(self, episode_id: str) -> bool:
        return self.delete_many((episode_id,)) == 1

    def delete_many(self, episode_ids: Sequence[str]) -> int:
        with self._lock:
            deleted = 0
            for episode_id in dict.fromkeys(episode_ids):
                ep = self._by_id.get(episode_id)
                if ep is not None:
                    self._remove(ep)
                    deleted += 1
            self._dirty = self._dirty or deleted > 0
            return deleted

    def mark_consolidated(self, episode_ids: Sequence[str], graph_version: int) -> MarkOutcome:
        with self._lock:
            marked = already = 0
            missing: list[str] = []
            for episode_id in dict.fromkeys(episode_ids):
                ep = self._by_id.get(episode_id)
                if ep is None:
                    missing.append(episode_id)
                elif ep.consolidated:
                    already += 1
                else:
                    new = dataclasses.replace(
                        ep, consolidated=True, tier=Tier.LTM, graph_version=graph_version
                    )
                    self._by_id[episode_id] = self._by_seq[ep.seq] = new
                    marked += 1
            self._dirty = self._dirty or marked > 0
            return MarkOutcome(marked, already, tuple(missing))

    def purge_expired(self, stored_before_ms: int, keep_ref_count: int, dry_run: bool) -> int:
        with self._lock:
            doomed = [
                ep
                for ep in self._by_id.values()
                if ep.stored_ms < stored_before_ms
                and ep.ref_count < keep_ref_count
                and not ep.consolidated
            ]
            if not dry_run:
                for ep in doomed:
                    self._remove(ep)
                self._dirty = self._dirty or bool(doomed)
            return len(doomed)

    def totals(self) -> tuple[int, int]:
        with self._lock:
            return len(self._by_id), self._bytes

    def stats(self) -> VaultStats:
        with self._lock:
            per_tier: dict[Tier, list[int]] = {}
            consolidated = 0
            for ep in self._by_id.values():
                t = per_tier.setdefault(ep.tier, [0, 0])
                t[0] += 1
                t[1] += ep.size_bytes
                consolidated += ep.consolidated
            return VaultStats(
                episode_count=len(self._by_id),
                size_bytes=self._bytes,
                consolidated_count=consolidated,
                last_seq=self._last_seq,
                oldest_ms=self._recent[0][0] if self._recent else None,
                newest_ms=self._recent[-1][0] if self._recent else None,
                tiers=tuple(TierCount(t, n, b) for t, (n, b) in sorted(per_tier.items())),
            )

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._snapshotter is not None:
            self._snapshotter.stop()
        self.snapshot()
