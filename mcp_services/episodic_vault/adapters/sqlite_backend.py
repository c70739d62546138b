"""SQLite backend: the default. WAL journal, one writer, several readers.

With synchronous=FULL (the default) an acknowledged put survives a crash of the process and of the
machine; NORMAL survives a crash of the process only. The schema is versioned with
PRAGMA user_version and migrated forward at open; a database written by a newer version is refused.
Counts and sizes are kept by triggers so stats after every write cost O(1).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcp_services.episodic_vault.adapters.body import decode_body, encode_body
from mcp_services.episodic_vault.domain.backend import IdConflict, SchemaTooNew
from mcp_services.episodic_vault.domain.disk_full import DiskFull, is_disk_full
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
from mcp_services.episodic_vault.settings import SqliteConfig

# Each entry migrates from version i to i + 1. Append, never edit: databases in the field ran them.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE episodes (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        id           TEXT    NOT NULL UNIQUE,
        ts_ms        INTEGER NOT NULL,
        stored_ms    INTEGER NOT NULL,
        source_type  TEXT    NOT NULL,
        energy       REAL    NOT NULL,
        ref_count    INTEGER NOT NULL,
        tier         INTEGER NOT NULL,
        consolidated INTEGER NOT NULL DEFAULT 0,
        content_hash TEXT    NOT NULL,
        size_bytes   INTEGER NOT NULL,
        body         BLOB    NOT NULL
    );
    CREATE INDEX episodes_recent ON episodes (ts_ms, seq);
    CREATE INDEX episodes_stored ON episodes (stored_ms);
    CREATE INDEX episodes_unconsolidated ON episodes (seq) WHERE consolidated = 0;
    CREATE TABLE episode_tags (
        tag TEXT    NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (tag, seq)
    ) WITHOUT ROWID;
    CREATE TABLE counters (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        episodes     INTEGER NOT NULL,
        bytes        INTEGER NOT NULL,
        consolidated INTEGER NOT NULL
    );
    INSERT INTO counters VALUES (1, 0, 0, 0);
    CREATE TRIGGER episodes_ins AFTER INSERT ON episodes BEGIN
        UPDATE counters SET episodes = episodes + 1, bytes = bytes + NEW.size_bytes,
            consolidated = consolidated + NEW.consolidated;
    END;
    CREATE TRIGGER episodes_del AFTER DELETE ON episodes BEGIN
        UPDATE counters SET episodes = episodes - 1, bytes = bytes - OLD.size_bytes,
            consolidated = consolidated - OLD.consolidated;
        DELETE FROM episode_tags WHERE seq = OLD.seq;
    END;
    CREATE TRIGGER episodes_consolidated AFTER UPDATE OF consolidated ON episodes BEGIN
        UPDATE counters SET consolidated = consolidated + NEW.consolidated - OLD.consolidated;
    END;
    """,
    # 2: the graph version an episode was consolidated into; consolidated episodes are LTM.
    """
    ALTER TABLE episodes ADD COLUMN graph_version INTEGER NOT NULL DEFAULT 0;
    UPDATE episodes SET tier = 3 WHERE consolidated = 1;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = "seq, ts_ms, stored_ms, ref_count, tier, consolidated, content_hash, body, graph_version"
# SQLite's default limit on bound parameters is 32766 since 3.32, 999 before: stay under both.
_ID_CHUNK = 900


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the schema to SCHEMA_VERSION; refuse a database from a newer version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this release's {SCHEMA_VERSION}; "
            "run the release that wrote it (migrations never run backwards)"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(
            f"BEGIN; {MIGRATIONS[target - 1]}; PRAGMA user_version = {target}; COMMIT;"
        )
    return SCHEMA_VERSION


def _row_to_episode(row: sqlite3.Row | tuple[Any, ...]) -> Episode:
    seq, _ts, stored_ms, ref_count, tier, consolidated, content_hash, body, graph_version = row
    return decode_body(
        body,
        ref_count=ref_count,
        tier=tier,
        consolidated=bool(consolidated),
        stored_ms=stored_ms,
        seq=seq,
        content_hash=content_hash,
        graph_version=graph_version,
    )


class SqliteBackend:
    name = "sqlite"

    def __init__(self, cfg: SqliteConfig, path: Path) -> None:
        self._cfg = cfg
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        migrate(self._writer, path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self._cfg.busy_timeout_ms}")
        conn.execute(f"PRAGMA journal_mode = {self._cfg.journal_mode}")
        conn.execute(f"PRAGMA synchronous = {self._cfg.synchronous}")
        conn.execute(f"PRAGMA cache_size = -{self._cfg.cache_size_kb}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a full disk (SQLITE_FULL) raises DiskFull, nothing written."""
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (it does on SQLITE_FULL).
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    raise DiskFull(self.path, "writing the SQLite database") from exc
                raise

    def put_many(self, episodes: Sequence[Episode], stored_ms: int) -> list[PutOutcome]:
        outcomes: list[PutOutcome] = []
        in_batch: dict[str, PutOutcome] = {}
        with self._transaction() as conn:
            for ep in episodes:
                prior = in_batch.get(ep.id)
                if prior is None:
                    row = conn.execute(
                        "SELECT content_hash, seq FROM episodes WHERE id = ?", (ep.id,)
                    ).fetchone()
                    if row is not None:
                        prior = PutOutcome(ep.id, PutStatus.EXISTING, row[1], row[0])
                if prior is not None:
                    if prior.content_hash != ep.content_hash:
                        raise IdConflict(ep.id)
                    outcome = PutOutcome(ep.id, PutStatus.EXISTING, prior.seq, prior.content_hash)
                else:
                    body = encode_body(ep)
                    cur = conn.execute(
                        "INSERT INTO episodes (id, ts_ms, stored_ms, source_type, energy,"
                        " ref_count,"
                        " tier, consolidated, content_hash, size_bytes, body)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            ep.id, ep.timestamp_ms, stored_ms, ep.source.type, ep.energy,
                            ep.ref_count, int(ep.tier), int(ep.consolidated), ep.content_hash,
                            len(body), body,
                        ),
                    )  # fmt: skip
                    seq = int(cur.lastrowid or 0)
                    conn.executemany(
                        "INSERT INTO episode_tags (tag, seq) VALUES (?, ?)",
                        [(t, seq) for t in ep.tags],
                    )
                    outcome = PutOutcome(ep.id, PutStatus.CREATED, seq, ep.content_hash, len(body))
                in_batch[ep.id] = outcome
                outcomes.append(outcome)
        return outcomes

    def get(self, episode_id: str) -> Episode | None:
        row = (
            self._reader()
            .execute(f"SELECT {_COLUMNS} FROM episodes WHERE id = ?", (episode_id,))
            .fetchone()
        )
        return None if row is None else _row_to_episode(row)

    def get_many(self, episode_ids: Sequence[str]) -> dict[str, Episode]:
        ids = list(dict.fromkeys(episode_ids))
        out: dict[str, Episode] = {}
        # SQLite's default limit on host parameters is 999 (older builds): query in chunks.
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = (
                self._reader()
                .execute(f"SELECT {_COLUMNS} FROM episodes WHERE id IN ({marks})", chunk)
                .fetchall()
            )
            for row in rows:
                ep = _row_to_episode(row)
                out[ep.id] = ep
        return out

    def list_recent(
        self, flt: EpisodeFilter, limit: int, after: ListCursor | None
    ) -> list[Episode]:
        where: list[str] = []
        args: list[Any] = []
        if after is not None:
            where.append("(ts_ms < ? OR (ts_ms = ? AND seq < ?))")
            args += [after.timestamp_ms, after.timestamp_ms, after.seq]
        if flt.since_ms is not None:
            where.append("ts_ms >= ?")
            args.append(flt.since_ms)
        if flt.until_ms is not None:
            where.append("ts_ms < ?")
            args.append(flt.until_ms)
        if flt.source_type:
            where.append("source_type = ?")
            args.append(flt.source_type)
        if flt.min_energy > 0:
            where.append("energy >= ?")
            args.append(flt.min_energy)
        for tag in flt.tags:
            where.append("seq IN (SELECT seq FROM episode_tags WHERE tag = ?)")
            args.append(tag)
        sql = f"SELECT {_COLUMNS} FROM episodes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts_ms DESC, seq DESC LIMIT ?"
        args.append(limit)
        return [_row_to_episode(r) for r in self._reader().execute(sql, args)]

    def scan(self, after_seq: int, limit: int, only_unconsolidated: bool) -> list[Episode]:
        cond = " AND consolidated = 0" if only_unconsolidated else ""
        rows = self._reader().execute(
            f"SELECT {_COLUMNS} FROM episodes WHERE seq > ?{cond} ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [_row_to_episode(r) for r in rows]

    def delete(self, episode_id: str) -> bool:
        return self.delete_many((episode_id,)) == 1

    def delete_many(self, episode_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(episode_ids))
        deleted = 0
        with self._transaction() as conn:
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = ids[i : i + _ID_CHUNK]
                marks = ",".join("?" * len(chunk))
                deleted += conn.execute(
                    f"DELETE FROM episodes WHERE id IN ({marks})", chunk
                ).rowcount
        return deleted

    def mark_consolidated(self, episode_ids: Sequence[str], graph_version: int) -> MarkOutcome:
        ids = list(dict.fromkeys(episode_ids))
        found: set[str] = set()
        marked = 0
        with self._transaction() as conn:
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = ids[i : i + _ID_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT id FROM episodes WHERE id IN ({marks})", chunk)
                found.update(r[0] for r in rows)
                marked += conn.execute(
                    f"UPDATE episodes SET consolidated = 1, tier = {int(Tier.LTM)},"
                    f" graph_version = ? WHERE consolidated = 0 AND id IN ({marks})",
                    [graph_version, *chunk],
                ).rowcount
        missing = tuple(i for i in ids if i not in found)
        return MarkOutcome(marked, len(found) - marked, missing)

    def purge_expired(self, stored_before_ms: int, keep_ref_count: int, dry_run: bool) -> int:
        cond = "stored_ms < ? AND ref_count < ? AND consolidated = 0"
        args = (stored_before_ms, keep_ref_count)
        if dry_run:
            row = self._reader().execute(f"SELECT COUNT(*) FROM episodes WHERE {cond}", args)
            return int(row.fetchone()[0])
        with self._transaction() as conn:
            return conn.execute(f"DELETE FROM episodes WHERE {cond}", args).rowcount

    def totals(self) -> tuple[int, int]:
        row = self._reader().execute("SELECT episodes, bytes FROM counters").fetchone()
        return int(row[0]), int(row[1])

    def stats(self) -> VaultStats:
        conn = self._reader()
        # One read transaction so the numbers agree with each other.
        conn.execute("BEGIN")
        try:
            count, size, consolidated = conn.execute(
                "SELECT episodes, bytes, consolidated FROM counters"
            ).fetchone()
            oldest, newest = conn.execute("SELECT MIN(ts_ms), MAX(ts_ms) FROM episodes").fetchone()
            # AUTOINCREMENT keeps the highest seq ever issued, even after that episode is deleted.
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'episodes'").fetchone()
            last_seq = 0 if row is None else row[0]
            tiers = tuple(
                TierCount(Tier(t), int(n), int(b))
                for t, n, b in conn.execute(
                    "SELECT tier, COUNT(*), SUM(size_bytes) FROM episodes"
                    " GROUP BY tier ORDER BY tier"
                )
            )
        finally:
            conn.execute("COMMIT")
        return VaultStats(
            episode_count=int(count),
            size_bytes=int(size),
            consolidated_count=int(consolidated),
            last_seq=int(last_seq),
            oldest_ms=oldest,
            newest_ms=newest,
            tiers=tiers,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()
