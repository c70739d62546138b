"""PostgreSQL backend: psycopg 3 over a connection pool, tables in their own schema.

Writers serialise on the single `counters` row (SELECT ... FOR UPDATE first in every write
transaction). That gives the same guarantees as SQLite's one writer: seq numbers are handed out in
commit order, so a Scan consumer that has read up to seq N never later finds a smaller seq appear;
an id is checked and inserted without a race; and the highest seq ever issued (counters.last_seq)
survives deletions. New episodes go in with one COPY per put. Statement-level triggers with
transition tables keep counts and sizes in `counters`, so totals() is one row read and a DELETE run
by hand keeps them right too.

The schema is versioned in `schema_version` and migrated forward at open under an advisory lock (so
replicas starting together do not race); a schema written by a newer release is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from mcp_services.episodic_vault.adapters.body import decode_body, encode_body
from mcp_services.episodic_vault.domain.backend import (
    BackendUnavailable,
    CapacityExceeded,
    IdConflict,
    SchemaTooNew,
)
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
from mcp_services.episodic_vault.settings import VaultPostgresConfig

# Each entry migrates from version i to i + 1 and runs with search_path set to the vault's schema.
# Append, never edit: databases in the field ran them.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE episodes (
        seq          bigint           PRIMARY KEY,
        id           text             NOT NULL UNIQUE,
        ts_ms        bigint           NOT NULL,
        stored_ms    bigint           NOT NULL,
        source_type  text             NOT NULL,
        energy       double precision NOT NULL,
        ref_count    integer          NOT NULL,
        tier         smallint         NOT NULL,
        consolidated boolean          NOT NULL DEFAULT false,
        content_hash text             NOT NULL,
        size_bytes   integer          NOT NULL,
        tags         text[]           NOT NULL DEFAULT '{}',
        body         bytea            NOT NULL
    );
    CREATE INDEX episodes_recent ON episodes (ts_ms, seq);
    CREATE INDEX episodes_stored ON episodes (stored_ms) WHERE NOT consolidated;
    CREATE INDEX episodes_unconsolidated ON episodes (seq) WHERE NOT consolidated;
    CREATE INDEX episodes_tags ON episodes USING gin (tags);
    CREATE TABLE counters (
        id           smallint PRIMARY KEY CHECK (id = 1),
        last_seq     bigint   NOT NULL,
        episodes     bigint   NOT NULL,
        bytes        bigint   NOT NULL,
        consolidated bigint   NOT NULL
    );
    INSERT INTO counters VALUES (1, 0, 0, 0, 0);
    -- SET search_path FROM CURRENT: the functions find `counters` whatever the caller's path.
    CREATE FUNCTION episodes_count_ins() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        UPDATE counters SET episodes = episodes + d.n, bytes = bytes + d.b,
            consolidated = consolidated + d.c
        FROM (SELECT count(*) AS n, coalesce(sum(size_bytes), 0) AS b,
                     count(*) FILTER (WHERE consolidated) AS c FROM added) AS d
        WHERE id = 1;
        RETURN NULL;
    END $$;
    CREATE FUNCTION episodes_count_del() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        UPDATE counters SET episodes = episodes - d.n, bytes = bytes - d.b,
            consolidated = consolidated - d.c
        FROM (SELECT count(*) AS n, coalesce(sum(size_bytes), 0) AS b,
                     count(*) FILTER (WHERE consolidated) AS c FROM removed) AS d
        WHERE id = 1;
        RETURN NULL;
    END $$;
    CREATE FUNCTION episodes_count_upd() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        UPDATE counters SET bytes = bytes + d.b, consolidated = consolidated + d.c
        FROM (SELECT
                (SELECT coalesce(sum(size_bytes), 0) FROM after_rows)
                  - (SELECT coalesce(sum(size_bytes), 0) FROM before_rows) AS b,
                (SELECT count(*) FILTER (WHERE consolidated) FROM after_rows)
                  - (SELECT count(*) FILTER (WHERE consolidated) FROM before_rows) AS c) AS d
        -- Updates that change neither (a ref_count bump) leave the writers' row alone.
        WHERE id = 1 AND (d.b <> 0 OR d.c <> 0);
        RETURN NULL;
    END $$;
    CREATE TRIGGER episodes_ins AFTER INSERT ON episodes REFERENCING NEW TABLE AS added
        FOR EACH STATEMENT EXECUTE FUNCTION episodes_count_ins();
    CREATE TRIGGER episodes_del AFTER DELETE ON episodes REFERENCING OLD TABLE AS removed
        FOR EACH STATEMENT EXECUTE FUNCTION episodes_count_del();
    CREATE TRIGGER episodes_upd AFTER UPDATE ON episodes
        REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
        FOR EACH STATEMENT EXECUTE FUNCTION episodes_count_upd();
    """,
    # 2: the graph version an episode was consolidated into; consolidated episodes are LTM.
    """
    ALTER TABLE episodes ADD COLUMN graph_version bigint NOT NULL DEFAULT 0;
    UPDATE episodes SET tier = 3 WHERE consolidated AND tier <> 3;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = "seq, ref_count, tier, consolidated, stored_ms, content_hash, body, graph_version"
_INSERT_COLUMNS = (
    "seq, id, ts_ms, stored_ms, source_type, energy, ref_count, tier, consolidated,"
    " content_hash, size_bytes, tags, body"
)
# COPY's column types, in _INSERT_COLUMNS order (stated, so an empty tags list needs no guessing).
_INSERT_TYPES = (
    "int8", "text", "int8", "int8", "text", "float8", "int4", "int2", "bool", "text", "int4",
    "text[]", "bytea",
)  # fmt: skip
_LOCK_WRITERS = "SELECT last_seq FROM counters WHERE id = 1 FOR UPDATE"


def redacted(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable vault.postgres.dsn>"
    params.pop("password", None)
    return make_conninfo("", **params)


def migrate(conn: psycopg.Connection[Any], schema: str, where: str) -> int:
    """Create `schema` if needed and bring it to SCHEMA_VERSION; refuse a newer one.

    `conn` must be in autocommit mode with search_path set to `schema`.
    """
    with conn.transaction():
        # Replicas opening one schema together wait for each other instead of racing.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tori-vault:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (id smallint PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
        )
        conn.execute("INSERT INTO schema_version VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
        row = conn.execute("SELECT version FROM schema_version WHERE id = 1").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"schema {schema!r} in {where} has schema version {version}, newer than this "
                f"release's {SCHEMA_VERSION}; run the release that wrote it (migrations never "
                "run backwards), or point vault.postgres.schema_name elsewhere"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[target - 1])
            conn.execute("UPDATE schema_version SET version = %s WHERE id = 1", (target,))
    return SCHEMA_VERSION


def _row_to_episode(row: tuple[Any, ...]) -> Episode:
    seq, ref_count, tier, consolidated, stored_ms, content_hash, body, graph_version = row
    return decode_body(
        bytes(body),
        ref_count=ref_count,
        tier=tier,
        consolidated=consolidated,
        stored_ms=stored_ms,
        seq=seq,
        content_hash=content_hash,
        graph_version=graph_version,
    )


class PostgresBackend:
    """The VaultBackend contract over one PostgreSQL schema.

    Thread-safe: each call borrows a connection from the pool (waiting up to pool_timeout_s).
    Raises BackendUnavailable at construction when the server cannot be reached and SchemaTooNew
    when the schema was written by a newer release.
    """

    name = "postgres"

    def __init__(self, cfg: VaultPostgresConfig) -> None:
        self._cfg = cfg
        self._where = redacted(cfg.dsn)
        self._batch = cfg.batch_size
        schema = cfg.schema_name

        def configure(conn: psycopg.Connection[Any]) -> None:
            # Session settings, once per new connection (autocommit, so they stick).
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            conn.execute(
                sql.SQL("SET statement_timeout = {}").format(sql.Literal(cfg.statement_timeout_ms))
            )

        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            cfg.dsn,
            min_size=cfg.pool_min_size,
            max_size=cfg.pool_max_size,
            timeout=cfg.pool_timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(2, round(cfg.connect_timeout_s))},
            configure=configure,
            # A connection broken while idle (server restart) is replaced, not handed out.
            check=ConnectionPool.check_connection,
            name=f"vault-{schema}",
            open=False,
        )
        try:
            self._pool.open(wait=cfg.pool_min_size > 0, timeout=cfg.connect_timeout_s)
            with self._connection() as conn:
                migrate(conn, schema, self._where)
        except BaseException as exc:
            self._pool.close()
            if isinstance(exc, psycopg.OperationalError):
                raise BackendUnavailable(
                    f"cannot reach PostgreSQL at {self._where} (vault.postgres.dsn) within "
                    f"{cfg.connect_timeout_s} s (vault.postgres.connect_timeout_s): {exc}"
                ) from exc
            raise

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, with driver errors mapped to the backend hierarchy
        (domain/backend.py)."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.errors.DiskFull as exc:
            raise CapacityExceeded(
                f"PostgreSQL at {self._where} is out of disk: {exc}; purge or add space"
            ) from exc
        except psycopg.OperationalError as exc:
            # Connection loss, pool timeout, statement timeout, serialisation failure: retryable.
            raise BackendUnavailable(
                f"PostgreSQL at {self._where} (vault.postgres.dsn): {exc}; retry later"
            ) from exc

    # -- writes ------------------------------------------------------------------------------
    def put_many(self, episodes: Sequence[Episode], stored_ms: int) -> list[PutOutcome]:
        """One transaction; new rows are streamed into one COPY as they are encoded, so a batch
        read from a spool (PutEpisodes) is never held in memory whole. A conflict found midway
        aborts the COPY and the transaction: nothing is stored."""
        if not episodes:
            return []
        outcomes: list[PutOutcome] = []
        start_seq = 0
        with self._connection() as conn, conn.transaction():
            row = conn.execute(_LOCK_WRITERS).fetchone()
            last_seq = start_seq = int(row[0]) if row else 0
            ids = list(dict.fromkeys(ep.id for ep in episodes))
            known: dict[str, PutOutcome] = {}
            for i in range(0, len(ids), self._batch):
                for episode_id, content_hash, seq in conn.execute(
                    "SELECT id, content_hash, seq FROM episodes WHERE id = ANY(%s)",
                    (ids[i : i + self._batch],),
                ):
                    known[episode_id] = PutOutcome(
                        episode_id, PutStatus.EXISTING, seq, content_hash
                    )
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY episodes ({_INSERT_COLUMNS}) FROM STDIN") as copy,
            ):
                copy.set_types(list(_INSERT_TYPES))
                for ep in episodes:
                    prior = known.get(ep.id)
                    if prior is not None:
                        if prior.content_hash != ep.content_hash:
                            raise IdConflict(ep.id)
                        outcomes.append(
                            PutOutcome(ep.id, PutStatus.EXISTING, prior.seq, prior.content_hash)
                        )
                        continue
                    last_seq += 1
                    body = encode_body(ep)
                    copy.write_row(
                        (
                            last_seq, ep.id, ep.timestamp_ms, stored_ms, ep.source.type,
                            ep.energy, ep.ref_count, int(ep.tier), ep.consolidated,
                            ep.content_hash, len(body), list(ep.tags), body,
                        )
                    )  # fmt: skip
                    known[ep.id] = PutOutcome(ep.id, PutStatus.EXISTING, last_seq, ep.content_hash)
                    outcomes.append(
                        PutOutcome(ep.id, PutStatus.CREATED, last_seq, ep.content_hash, len(body))
                    )
            if last_seq != start_seq:
                conn.execute("UPDATE counters SET last_seq = %s WHERE id = 1", (last_seq,))
        return outcomes

    def delete(self, episode_id: str) -> bool:
        return self.delete_many((episode_id,)) == 1

    def delete_many(self, episode_ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(episode_ids))
        deleted = 0
        with self._connection() as conn, conn.transaction():
            conn.execute(_LOCK_WRITERS)
            for i in range(0, len(ids), self._batch):
                chunk = ids[i : i + self._batch]
                deleted += conn.execute(
                    "DELETE FROM episodes WHERE id = ANY(%s)", (chunk,)
                ).rowcount
        return deleted

    def mark_consolidated(self, episode_ids: Sequence[str], graph_version: int) -> MarkOutcome:
        ids = list(dict.fromkeys(episode_ids))
        found: set[str] = set()
        marked = 0
        with self._connection() as conn, conn.transaction():
            for i in range(0, len(ids), self._batch):
                chunk = ids[i : i + self._batch]
                # FOR UPDATE: a concurrent delete waits, so found and marked agree.
                found.update(
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM episodes WHERE id = ANY(%s) FOR UPDATE", (chunk,)
                    )
                )
                marked += conn.execute(
                    "UPDATE episodes SET consolidated = true, tier = %s, graph_version = %s"
                    " WHERE id = ANY(%s) AND NOT consolidated",
                    (int(Tier.LTM), graph_version, chunk),
                ).rowcount
        return MarkOutcome(marked, len(found) - marked, tuple(i for i in ids if i not in found))

    def purge_expired(self, stored_before_ms: int, keep_ref_count: int, dry_run: bool) -> int:
        """Deletes in transactions of batch_size rows, oldest first, so puts wait at most one
        batch; the purge as a whole is not atomic."""
        cond = "stored_ms < %s AND ref_count < %s AND NOT consolidated"
        args = (stored_before_ms, keep_ref_count)
        total = 0
        with self._connection() as conn:
            if dry_run:
                row = conn.execute(f"SELECT count(*) FROM episodes WHERE {cond}", args).fetchone()
                return int(row[0]) if row else 0
            while True:
                with conn.transaction():
                    conn.execute(_LOCK_WRITERS)
                    n = conn.execute(
                        "DELETE FROM episodes WHERE seq IN (SELECT seq FROM episodes"
                        f" WHERE {cond} ORDER BY stored_ms LIMIT %s)",
                        (*args, self._batch),
                    ).rowcount
                total += n
                if n < self._batch:
                    return total

    # -- reads -------------------------------------------------------------------------------
    def get(self, episode_id: str) -> Episode | None:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM episodes WHERE id = %s", (episode_id,)
            ).fetchone()
        return None if row is None else _row_to_episode(row)

    def get_many(self, episode_ids: Sequence[str]) -> dict[str, Episode]:
        if not episode_ids:
            return {}
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM episodes WHERE id = ANY(%s)", (list(episode_ids),)
            ).fetchall()
        return {ep.id: ep for ep in map(_row_to_episode, rows)}

    def list_recent(
        self, flt: EpisodeFilter, limit: int, after: ListCursor | None
    ) -> list[Episode]:
        where: list[str] = []
        args: list[Any] = []
        if after is not None:
            # A row comparison, which the (ts_ms, seq) index answers directly.
            where.append("(ts_ms, seq) < (%s, %s)")
            args += [after.timestamp_ms, after.seq]
        if flt.since_ms is not None:
            where.append("ts_ms >= %s")
            args.append(flt.since_ms)
        if flt.until_ms is not None:
            where.append("ts_ms < %s")
            args.append(flt.until_ms)
        if flt.source_type:
            where.append("source_type = %s")
            args.append(flt.source_type)
        if flt.min_energy > 0:
            where.append("energy >= %s")
            args.append(flt.min_energy)
        if flt.tags:
            where.append("tags @> %s::text[]")
            args.append(list(flt.tags))
        query = f"SELECT {_COLUMNS} FROM episodes"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY ts_ms DESC, seq DESC LIMIT %s"
        args.append(limit)
        with self._connection() as conn:
            return [_row_to_episode(r) for r in conn.execute(query, args)]

    def scan(self, after_seq: int, limit: int, only_unconsolidated: bool) -> list[Episode]:
        cond = " AND NOT consolidated" if only_unconsolidated else ""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM episodes WHERE seq > %s{cond} ORDER BY seq LIMIT %s",
                (after_seq, limit),
            )
            return [_row_to_episode(r) for r in rows]

    def totals(self) -> tuple[int, int]:
        with self._connection() as conn:
            row = conn.execute("SELECT episodes, bytes FROM counters WHERE id = 1").fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def stats(self) -> VaultStats:
        with self._connection() as conn, conn.transaction():
            # One snapshot so the numbers agree with each other.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            counters = conn.execute(
                "SELECT episodes, bytes, consolidated, last_seq FROM counters WHERE id = 1"
            ).fetchone()
            span = conn.execute("SELECT min(ts_ms), max(ts_ms) FROM episodes").fetchone()
            tiers = tuple(
                TierCount(Tier(t), int(n), int(b))
                for t, n, b in conn.execute(
                    "SELECT tier, count(*), sum(size_bytes) FROM episodes"
                    " GROUP BY tier ORDER BY tier"
                )
            )
        count, size, consolidated, last_seq = counters or (0, 0, 0, 0)
        oldest, newest = span or (None, None)
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
        self._pool.close()
