"""The tiered store: STM in front of the durable backend (MTM), consolidated episodes (LTM), the
vector index and the concept index, kept in step.

It keeps the VaultBackend contract (backend.py), so the servicer talks to it as to a backend, and
adds search, recall and pruning. Writes are serialised (one write lock) so that the backend and the
in-process indexes change together: a delete or purge can never leave a ghost in Search or Recall.
The indexes cover the episodes written through this process and what the backend held at start;
episodes written by another vault replica into a shared Redis or PostgreSQL are not indexed until
this one restarts. What depends on the backend's kind (where the index lives, the store's identity,
the write gate over local data) is decided in adapters/storage.py and handed in.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from mcp_services.common.periodic import PeriodicThread
from mcp_services.episodic_vault.domain.backend import VaultBackend
from mcp_services.episodic_vault.domain.catalog import Catalog
from mcp_services.episodic_vault.domain.disk_full import DiskFull, is_disk_full, space_note
from mcp_services.episodic_vault.domain.importance import importance, least_important
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
from mcp_services.episodic_vault.domain.spool import EpisodeSpool
from mcp_services.episodic_vault.domain.stm import ShortTermTier
from mcp_services.episodic_vault.domain.vector_index import (
    F32,
    VectorIndex,
    content_key,
    normalised,
)
from mcp_services.episodic_vault.domain.write_gate import WriteGate
from mcp_services.episodic_vault.settings import VaultConfig

log = structlog.get_logger(__name__)

SCAN_CHUNK = 1000
# How often staged vectors are moved into HNSW.
INDEX_FLUSH_S = 0.05


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class SearchHit:
    episode: Episode
    score: float


@dataclass(frozen=True, slots=True)
class RecallHit:
    episode: Episode
    score: float
    matched: tuple[str, ...]


class SearchDisabled(Exception):
    """The deployment has no vector index (vault.index.enabled false or embedding_dim 0)."""


class TieredStore:
    """Thread-safe; open() before use, close() after."""

    def __init__(
        self,
        cfg: VaultConfig,
        backend: VaultBackend,
        index_path: Path | None,
        store_id: str,
        *,
        write_gate: WriteGate | None,
        on_change: Callable[[TieredStore], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self.backend = backend
        self.name = backend.name
        self._write = threading.Lock()
        self._cat_lock = threading.Lock()
        self._catalog = Catalog()
        self._stm = ShortTermTier(
            cfg.tiers.stm.capacity, cfg.tiers.stm.ttl_s, cfg.tiers.stm.max_bytes
        )
        self._dim = cfg.embedding_dim
        self.index: VectorIndex | None = None
        if cfg.index.enabled and cfg.embedding_dim > 0:
            self.index = VectorIndex(cfg.embedding_dim, cfg.index, index_path, store_id)
        self._on_change = on_change
        # The background index flush and tier maintenance (threads: the store is synchronous).
        self._loops: list[PeriodicThread] = []
        self._last_save = 0.0
        self.closed = False
        self.pruned: dict[Tier, int] = {Tier.MTM: 0, Tier.LTM: 0}
        # Read-only when the disk is full at start (write_gate.py); None: nothing local
        # (adapters/storage.py makes it for the configured backend).
        self.write_gate = write_gate

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> dict[str, object]:
        """Build the catalog from the backend and load or rebuild the vector index; what it did."""
        started = time.perf_counter()
        if self.write_gate is not None:
            self.write_gate.check_at_start()
        held = self.index.load() if self.index is not None else {}
        valid: dict[int, int] = {}
        added = 0
        after = 0
        while True:
            batch = self.backend.scan(after, SCAN_CHUNK, False)
            vectors = self._vectors(batch)
            with self._cat_lock:
                for ep in batch:
                    self._catalog.add(ep, has_vector=ep.seq in vectors)
            stage = []
            for seq, (key, _) in vectors.items():
                valid[seq] = key
                if held.get(seq) != key:
                    stage.append(seq)
            if stage and self.index is not None:
                self.index.stage_many(
                    np.array(stage, np.int64),
                    np.array([vectors[s][0] for s in stage], np.int64),
                    np.stack([vectors[s][1] for s in stage]),
                )
                added += len(stage)
            if len(batch) < SCAN_CHUNK:
                break
            after = batch[-1].seq
        report: dict[str, object] = {"episodes": self._catalog.live}
        if self.write_gate is not None and self.write_gate.read_only:
            report["read_only"] = self.write_gate.reason
        if self.index is not None:
            dropped = self.index.keep_only(valid)
            compacted = self.index.compact_if_sparse()
            self.index.flush()
            self._save_index("open")
            report |= {
                "index_loaded": self.index.loaded_from_disk,
                "index_rebuild_reason": self.index.rebuild_reason,
                "vectors_added": added,
                "vectors_dropped": dropped,
                "compacted": compacted,
            }
            self._last_save = time.monotonic()
            self._start_loop(PeriodicThread("vault-indexer", self._flush_index, INDEX_FLUSH_S))
        self._start_loop(
            PeriodicThread(
                "vault-maintenance", self._maintain, lambda: self._cfg.tiers.maintenance_interval_s
            )
        )
        report["seconds"] = round(time.perf_counter() - started, 3)
        log.info("vault_store_opened", backend=self.name, **report)
        return report

    def _start_loop(self, loop: PeriodicThread) -> None:
        loop.start()
        self._loops.append(loop)

    def stop_background(self) -> None:
        """Stop the index flush and maintenance threads (after a run in progress)."""
        for loop in self._loops:
            loop.stop()

    def _flush_index(self) -> None:
        assert self.index is not None
        try:
            self.index.flush()
            # Pruned, purged and deleted episodes leave tombstones; a bounded store keeps a
            # bounded index because they are compacted away here.
            self.index.compact_if_sparse()
            if time.monotonic() - self._last_save >= self._cfg.index.save_interval_s:
                self._save_index("interval")
                self._last_save = time.monotonic()
        except Exception:  # keep indexing; the failure is logged and staged vectors stay
            log.exception("vault_index_flush_failed")

    def _maintain(self) -> None:
        try:
            self.expire_stm()
            self.prune_tiers(_now_ms())
        except Exception:  # a backend outage must not end maintenance for good
            log.exception("vault_maintenance_failed")

    def close(self) -> None:
        """Stop the background threads, save the index and close the backend (once)."""
        if self.closed:
            return
        self.closed = True
        self.stop_background()
        if self.index is not None:
            self.index.flush()
            self._save_index("close")
        self.backend.close()

    def _save_index(self, when: str) -> None:
        """Persist the index; a failure (a full disk) is a warning: the index is rebuilt from
        the backend at the next start, so nothing is lost but start-up time."""
        assert self.index is not None
        try:
            self.index.save()
        except (OSError, RuntimeError) as exc:  # faiss reports write errors as RuntimeError
            log.warning(
                "vault_index_save_failed",
                when=when,
                path=str(self.index.path),
                disk_full=is_disk_full(exc),
                free=space_note(self.index.path) if self.index.path else "",
                error=str(exc),
                consequence="the index is rebuilt from the stored episodes at the next start",
            )

    # -- helpers -----------------------------------------------------------------------------
    def _forget(self, episode_ids: Sequence[str]) -> None:
        """Drop episodes from the in-process tiers and indexes (caller holds _write)."""
        seqs = []
        with self._cat_lock:
            for i in episode_ids:
                row = self._catalog.remove(i)
                if row is not None:
                    seqs.append(int(self._catalog.seq[row]))
            self._catalog.compact_if_sparse()
        for i in episode_ids:
            self._stm.remove(i)
        if seqs and self.index is not None:
            self.index.remove_many(seqs)

    def _hot(self, eps: list[Episode]) -> list[Episode]:
        """Episodes as the tiers see them: those held in STM report tier STM."""
        return [
            dataclasses.replace(e, tier=Tier.STM) if not e.consolidated and e.id in self._stm else e
            for e in eps
        ]

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    # -- the backend contract ----------------------------------------------------------------
    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Around a write: refused while read-only; a full disk makes the store read-only."""
        gate = self.write_gate
        if gate is not None:
            gate.ensure_writable(what)
        try:
            yield
        except DiskFull as exc:
            if gate is not None:
                gate.disk_full(exc)
            raise

    def _freeing(self) -> None:
        """Before a delete or purge: a read-only store gives up its disk reserve for it."""
        if self.write_gate is not None:
            self.write_gate.make_room()

    def put_many(self, episodes: Sequence[Episode], stored_ms: int) -> list[PutOutcome]:
        with self._writing("the put"), self._write:
            outcomes = self.backend.put_many(episodes, stored_ms)
            self._admit(episodes, outcomes, stored_ms)
        return outcomes

    def put_spooled(self, spool: EpisodeSpool, stored_ms: int) -> list[PutOutcome]:
        """put_many for a streamed batch held on disk: one backend call (atomic as put_many is)
        reading the spool as it goes, then the in-process tiers fed a chunk at a time, so memory
        holds a chunk, not the batch (SQLite, PostgreSQL and memory read it as they write; Redis
        builds its one atomic script call from all of it)."""
        with self._writing("the put"), self._write:
            outcomes = self.backend.put_many(spool, stored_ms)
            for start, chunk in spool.chunks():
                self._admit(chunk, outcomes[start : start + len(chunk)], stored_ms)
        return outcomes

    def _admit(
        self, episodes: Sequence[Episode], outcomes: Sequence[PutOutcome], stored_ms: int
    ) -> None:
        """Enter the stored episodes in the catalog, STM and the index (caller holds _write)."""
        # One copy per new episode, as stored: in STM when there is one (the catalog counts
        # its durable tier as MTM and notes that it is hot).
        tier = Tier.STM if self._stm.capacity > 0 else None
        fresh: dict[str, Episode] = {}
        for ep, out in zip(episodes, outcomes, strict=True):
            if out.status is PutStatus.CREATED and ep.id not in fresh:
                fresh[ep.id] = dataclasses.replace(
                    ep,
                    seq=out.seq,
                    stored_ms=stored_ms,
                    size_bytes=out.size_bytes,
                    tier=tier or ep.tier,
                )
        vectors = self._vectors(list(fresh.values()))
        with self._cat_lock:
            for ep in fresh.values():
                self._catalog.add(ep, has_vector=ep.seq in vectors)
        for ep in fresh.values():
            for gone in self._stm.put(ep):
                self._left_stm(gone)
        if vectors and self.index is not None:
            self.index.stage_many(
                np.fromiter(vectors, np.int64, len(vectors)),
                np.fromiter((k for k, _ in vectors.values()), np.int64, len(vectors)),
                np.stack([v for _, v in vectors.values()]),
            )

    def _vectors(self, eps: Sequence[Episode]) -> dict[int, tuple[int, F32]]:
        """seq -> (content key, unit vector) of the episodes with a searchable embedding."""
        if self.index is None:
            return {}
        with_vec = [e for e in eps if len(e.embedding) == self._dim]
        if not with_vec:
            return {}
        m = np.stack([e.embedding.array() for e in with_vec])
        # As normalised() does it, in float32: a vector whose norm overflows is unsearchable.
        norms = np.linalg.norm(m, axis=1)
        ok = (norms > 0) & np.isfinite(norms)
        m /= np.where(ok, norms, np.float32(1))[:, None]
        return {e.seq: (content_key(e.content_hash), m[i]) for i, e in enumerate(with_vec) if ok[i]}

    def _left_stm(self, episode_id: str) -> None:
        with self._cat_lock:
            row = self._catalog.row(episode_id)
            if row is not None:
                self._catalog.in_stm[row] = False

    def get(self, episode_id: str) -> Episode | None:
        hot = self._stm.get(episode_id)
        ep = hot if hot is not None else self.backend.get(episode_id)
        if ep is not None:
            self._touch([episode_id])
        return ep

    def _touch(self, ids: Sequence[str]) -> None:
        with self._cat_lock:
            for i in ids:
                row = self._catalog.row(i)
                if row is not None:
                    self._catalog.access[row] += 1

    def list_recent(
        self, flt: EpisodeFilter, limit: int, after: ListCursor | None
    ) -> list[Episode]:
        return self._hot(self.backend.list_recent(flt, limit, after))

    def scan(self, after_seq: int, limit: int, only_unconsolidated: bool) -> list[Episode]:
        return self._hot(self.backend.scan(after_seq, limit, only_unconsolidated))

    def delete(self, episode_id: str) -> bool:
        self._freeing()
        with self._write:
            deleted = self.backend.delete(episode_id)
            self._forget([episode_id])
        return deleted

    def mark_consolidated(self, episode_ids: Sequence[str], graph_version: int) -> MarkOutcome:
        with self._writing("MarkConsolidated"), self._write:
            out = self.backend.mark_consolidated(episode_ids, graph_version)
            with self._cat_lock:
                rows = self._catalog.mark_consolidated(episode_ids)
                for row in rows:
                    self._catalog.in_stm[row] = False
                ids = [self._catalog.ids[r] for r in rows]
            for i in ids:
                self._stm.remove(i)  # consolidated: it moved on to LTM
        return out

    def purge_expired(self, stored_before_ms: int, keep_ref_count: int, dry_run: bool) -> int:
        if not dry_run:
            self._freeing()
        with self._write:
            n = self.backend.purge_expired(stored_before_ms, keep_ref_count, dry_run)
            if not dry_run:
                c = self._catalog
                with self._cat_lock:
                    k = c.n
                    doomed = np.flatnonzero(
                        c.alive[:k]
                        & (c.stored[:k] < stored_before_ms)
                        & (c.ref_count[:k] < keep_ref_count)
                        & ~c.consolidated[:k]
                    )
                    ids = [c.ids[r] for r in doomed]
                self._forget(ids)
        return n

    def totals(self) -> tuple[int, int]:
        return self.backend.totals()

    def stats(self) -> VaultStats:
        s = self.backend.stats()
        hot_n, hot_b = self._stm.totals()
        tiers = {t.tier: t for t in s.tiers}
        mtm = tiers.get(Tier.MTM, TierCount(Tier.MTM, 0, 0))
        out = []
        if hot_n:
            out.append(TierCount(Tier.STM, hot_n, hot_b))
        # Write-through: the backend counts STM's episodes as MTM; each episode has one tier here.
        if mtm.episode_count - hot_n > 0:
            out.append(
                TierCount(Tier.MTM, mtm.episode_count - hot_n, max(0, mtm.size_bytes - hot_b))
            )
        out += [t for t in s.tiers if t.tier not in (Tier.MTM, Tier.STM)]
        return dataclasses.replace(s, tiers=tuple(out))

    # -- tiers -------------------------------------------------------------------------------
    def expire_stm(self) -> int:
        gone = self._stm.expire()
        for i in gone:
            self._left_stm(i)
        return len(gone)

    def prune_tiers(self, now_ms: int) -> dict[Tier, int]:
        """Delete the least important episodes of MTM and LTM beyond their max_items."""
        done: dict[Tier, int] = {}
        for tier, limit in ((Tier.MTM, self._cfg.tiers.mtm), (Tier.LTM, self._cfg.tiers.ltm)):
            if limit.max_items == 0:
                continue
            with self._write:
                c = self._catalog
                with self._cat_lock:
                    k = c.n
                    in_tier = c.alive[:k] & (c.tier[:k] == int(tier))
                    excess = int(in_tier.sum()) - limit.max_items
                    if excess <= 0:
                        continue
                    # Hot (STM) episodes are the newest; prune among the rest.
                    rows = np.flatnonzero(in_tier & ~c.in_stm[:k])
                    scores = importance(
                        self._cfg.tiers,
                        c.energy[:k],
                        c.ref_count[:k],
                        c.stored[:k],
                        c.access[:k],
                        now_ms,
                    )
                    ids = [c.ids[r] for r in least_important(scores, rows, excess)]
                self.backend.delete_many(ids)
                self._forget(ids)
            done[tier] = len(ids)
            self.pruned[tier] += len(ids)
            log.info("vault_tier_pruned", tier=tier.name, deleted=len(ids), limit=limit.max_items)
        if done:
            self._changed()
        return done

    def tier_totals(self) -> dict[Tier, tuple[int, int]]:
        """(count, bytes) per tier, from the catalog (cheap: for metrics)."""
        c = self._catalog
        with self._cat_lock:
            k = c.n
            alive, size = c.alive[:k], c.size[:k]
            stm = alive & c.in_stm[:k]
            ltm = alive & (c.tier[:k] == int(Tier.LTM))
            mtm = alive & ~stm & ~ltm
            return {
                t: (int(m.sum()), int(size[m].sum()))
                for t, m in ((Tier.STM, stm), (Tier.MTM, mtm), (Tier.LTM, ltm))
            }

    # -- retrieval ---------------------------------------------------------------------------
    def _allowed(self, flt: EpisodeFilter, tier: Tier) -> npt.NDArray[np.bool_] | None:
        """The catalog rows passing the filter, None for all (caller holds _cat_lock: rows are
        renumbered when the catalog compacts)."""
        if flt == EpisodeFilter() and tier is Tier.UNSPECIFIED:
            return None
        return self._catalog.mask(flt, tier)

    def get_many(self, episode_ids: Sequence[str]) -> dict[str, Episode]:
        """Hot ones from STM, the rest from the backend in one call."""
        out: dict[str, Episode] = {}
        cold: list[str] = []
        for i in episode_ids:
            ep = self._stm.get(i)
            if ep is None:
                cold.append(i)
            else:
                out[i] = ep
        if cold:
            out |= self.backend.get_many(cold)
        return out

    def _fetch(self, ids: Sequence[str]) -> dict[str, Episode]:
        out = self.get_many(ids)
        self._touch(list(out))
        return out

    def search(
        self, query: Sequence[float], k: int, flt: EpisodeFilter, tier: Tier
    ) -> tuple[list[SearchHit], bool, int]:
        """The k nearest episodes by cosine, best first; whether exact; the index size.

        Raises SearchDisabled without an index and ValueError for a zero query."""
        if self.index is None:
            raise SearchDisabled(
                "semantic search is off in this deployment (vault.index.enabled is false or "
                "vault.embedding_dim is 0)"
            )
        q = normalised(query)
        if q is None:
            raise ValueError("is all zeros; cosine similarity needs a non-zero vector")
        allowed = None
        with self._cat_lock:
            mask = self._allowed(flt, tier)
            if mask is not None:
                allowed = self._catalog.seq[: len(mask)][
                    mask & self._catalog.has_vector[: len(mask)]
                ]
        hits, exact = self.index.search(q, k, allowed)
        with self._cat_lock:
            rows = [self._catalog.row_of_seq(s) for s, _ in hits]
            ids = [self._catalog.ids[r] if r is not None else "" for r in rows]
        eps = self._fetch([i for i in ids if i])
        out = [
            SearchHit(eps[i], score) for i, (_, score) in zip(ids, hits, strict=True) if i in eps
        ]
        return out, exact, len(self.index)

    def recall(
        self, cue: Mapping[str, float], k: int, flt: EpisodeFilter, tier: Tier
    ) -> list[RecallHit]:
        with self._cat_lock:
            matches = self._catalog.recall(cue, k, self._allowed(flt, tier))
            ids = [self._catalog.ids[m.row] for m in matches]
        eps = self._fetch(ids)
        return [
            RecallHit(eps[i], m.score, m.matched)
            for i, m in zip(ids, matches, strict=True)
            if i in eps
        ]
