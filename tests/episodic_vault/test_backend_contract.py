"""The storage contract, run against every backend (domain/backend.py states it)."""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from mcp_services.episodic_vault.adapters.memory_backend import MemoryBackend
from mcp_services.episodic_vault.adapters.postgres_backend import PostgresBackend
from mcp_services.episodic_vault.adapters.redis_backend import RedisBackend
from mcp_services.episodic_vault.adapters.sqlite_backend import SqliteBackend
from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.domain.backend import (
    BackendUnavailable,
    CapacityExceeded,
    IdConflict,
    SchemaTooNew,
    VaultBackend,
)
from mcp_services.episodic_vault.domain.model import (
    ConceptActivation,
    Episode,
    EpisodeFilter,
    ListCursor,
    PutStatus,
    Source,
    Tier,
)
from mcp_services.episodic_vault.settings import (
    MemoryConfig,
    SqliteConfig,
    VaultConfig,
    VaultPostgresConfig,
    VaultRedisConfig,
)

Opener = Callable[[], VaultBackend]


def make_ep(i: int, ts: int | None = None, **kw: object) -> Episode:
    base = Episode(
        id=f"ep-{i:05d}",
        timestamp_ms=1_700_000_000_000 + i if ts is None else ts,
        tags=("even",) if i % 2 == 0 else ("odd",),
        source=Source("test", "s", "u"),
        energy=float(i % 7),
        activation=ConceptActivation((f"c{i}", "shared"), (0.75, 0.25), (0.5, -1.5)),
        payload=bytes([i % 256]) * 10,
        metadata=(("i", str(i)),),
        content_hash=f"hash-{i}",
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


# The servers the redis and postgres cases run against; each test gets its own key prefix or schema.
REDIS_URL = os.environ.get("VAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get(
    "VAULT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _require(kind: str, target: str, probe: Callable[[], object], env_var: str) -> None:
    """Skip without the server, except under CI, where a missing server fails the test."""
    try:
        probe()
    except Exception as exc:  # whatever the client raises, the server is not usable
        reason = f"no {kind} at {target} ({exc}); start one or point {env_var} at one"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason} (CI is set: a missing server is a failure, not a skip)")
        pytest.skip(reason)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the test Redis; its keys are removed afterwards."""

    def ping() -> object:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1) as r:
            return r.ping()

    _require("Redis", REDIS_URL, ping, "VAULT_TEST_REDIS_URL")
    prefix = f"tori-test:{uuid.uuid4().hex}:"
    yield prefix
    with redis.Redis.from_url(REDIS_URL) as r:
        # SCAN, not KEYS: the test Redis may be shared and large.
        for key in r.scan_iter(match=prefix + "*", count=500):
            r.delete(key)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema of this test's own in the test database; dropped afterwards."""

    def connect() -> object:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone()

    _require("PostgreSQL", POSTGRES_DSN, connect, "VAULT_TEST_POSTGRES_DSN")
    schema = f"tori_test_{uuid.uuid4().hex}"
    yield schema
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def redis_config(prefix: str, **kw: object) -> VaultRedisConfig:
    return VaultRedisConfig(url=REDIS_URL, key_prefix=prefix, **kw)  # type: ignore[arg-type]


def postgres_config(schema: str, **kw: object) -> VaultPostgresConfig:
    # A small pool: several test backends may be open at once on a shared server.
    fields: dict[str, object] = {"pool_min_size": 1, "pool_max_size": 4} | kw
    return VaultPostgresConfig(dsn=POSTGRES_DSN, schema_name=schema, **fields)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "memory", "memory-snapshot", "redis", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the backend under test; calling it again reopens the same store."""
    opened: list[VaultBackend] = []
    # Server backends: one prefix / schema per test, shared by the reopenings.
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else ""
    schema = request.getfixturevalue("pg_schema") if request.param == "postgres" else ""

    def open_() -> VaultBackend:
        backend: VaultBackend
        if request.param == "sqlite":
            backend = SqliteBackend(SqliteConfig(), tmp_path / "vault.db")
        elif request.param == "memory":
            backend = MemoryBackend(MemoryConfig(), None)
        elif request.param == "redis":
            backend = RedisBackend(redis_config(prefix))
        elif request.param == "postgres":
            backend = PostgresBackend(postgres_config(schema))
        else:
            backend = MemoryBackend(MemoryConfig(snapshot_interval_s=3600), tmp_path / "snap.bin")
        opened.append(backend)
        return backend

    open_.durable = request.param != "memory"  # type: ignore[attr-defined]
    yield open_
    for b in opened:
        b.close()


@pytest.fixture
def backend(opener: Opener) -> VaultBackend:
    return opener()


class TestPut:
    def test_put_then_get_returns_the_same_content(self, backend: VaultBackend) -> None:
        """A stored episode reads back with its content and server fields filled in."""
        ep = make_ep(1)
        (out,) = backend.put_many([ep], stored_ms=123)
        assert out.status is PutStatus.CREATED and out.seq >= 1
        got = backend.get(ep.id)
        assert got is not None
        assert dataclasses.replace(got, seq=0, stored_ms=0, size_bytes=0) == ep
        assert got.seq == out.seq and got.stored_ms == 123 and got.size_bytes > 0

    def test_same_id_same_content_is_idempotent(self, backend: VaultBackend) -> None:
        """Re-putting identical content reports EXISTING with the original seq and stores nothing new."""
        (first,) = backend.put_many([make_ep(1)], 1)
        (again,) = backend.put_many([make_ep(1)], 2)
        assert again.status is PutStatus.EXISTING and again.seq == first.seq
        assert backend.totals()[0] == 1

    def test_same_id_different_content_conflicts_and_stores_nothing(
        self, backend: VaultBackend
    ) -> None:
        """An id taken by other content raises IdConflict and the whole batch is rolled back."""
        backend.put_many([make_ep(1)], 1)
        with pytest.raises(IdConflict, match="ep-00001"):
            backend.put_many([make_ep(2), make_ep(1, content_hash="other")], 2)
        assert backend.get("ep-00002") is None
        assert backend.totals()[0] == 1

    def test_conflict_inside_one_batch_is_detected(self, backend: VaultBackend) -> None:
        """Two episodes of one batch with one id and different content conflict; nothing is stored."""
        with pytest.raises(IdConflict):
            backend.put_many([make_ep(3), make_ep(3, content_hash="x")], 1)
        assert backend.totals() == (0, 0)

    def test_duplicate_inside_one_batch_with_same_content_is_existing(
        self, backend: VaultBackend
    ) -> None:
        """The second identical copy in a batch is EXISTING with the first copy's seq."""
        a, b = backend.put_many([make_ep(4), make_ep(4)], 1)
        assert (a.status, b.status) == (PutStatus.CREATED, PutStatus.EXISTING)
        assert a.seq == b.seq

    def test_seq_increases_and_is_never_reused_after_delete(self, backend: VaultBackend) -> None:
        """Sequence numbers grow with every new episode, also across deletions."""
        outs = backend.put_many([make_ep(i) for i in range(3)], 1)
        assert [o.seq for o in outs] == sorted({o.seq for o in outs})
        backend.delete("ep-00002")
        (new,) = backend.put_many([make_ep(9)], 2)
        assert new.seq > outs[-1].seq
        assert backend.stats().last_seq == new.seq

    def test_concurrent_puts_from_threads_all_land(self, backend: VaultBackend) -> None:
        """Puts from several threads at once are all stored, with distinct seqs."""

        def worker(k: int) -> None:
            for i in range(25):
                backend.put_many([make_ep(k * 100 + i)], 1)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        eps = backend.scan(0, 1000, False)
        assert len(eps) == 100 and len({e.seq for e in eps}) == 100


class TestRead:
    def test_list_recent_is_newest_first_and_pages_without_gaps(
        self, backend: VaultBackend
    ) -> None:
        """Paging by cursor walks every episode once, newest first, ties broken by seq."""
        backend.put_many([make_ep(i, ts=1000 + i // 3) for i in range(20)], 1)
        seen: list[str] = []
        cursor: ListCursor | None = None
        while True:
            page = backend.list_recent(EpisodeFilter(), 6, cursor)
            seen += [e.id for e in page]
            if len(page) < 6:
                break
            cursor = ListCursor(page[-1].timestamp_ms, page[-1].seq)
        assert seen == [f"ep-{i:05d}" for i in reversed(range(20))]

    def test_list_recent_filters(self, backend: VaultBackend) -> None:
        """Tags (all of them), time range, source type and minimum energy each narrow the list."""
        backend.put_many([make_ep(i) for i in range(14)], 1)
        t0 = 1_700_000_000_000

        def by(f: EpisodeFilter) -> set[str]:
            return {e.id for e in backend.list_recent(f, 100, None)}

        assert by(EpisodeFilter(tags=("even",))) == {f"ep-{i:05d}" for i in range(0, 14, 2)}
        assert by(EpisodeFilter(tags=("even", "odd"))) == set()
        assert by(EpisodeFilter(since_ms=t0 + 10, until_ms=t0 + 12)) == {"ep-00010", "ep-00011"}
        assert by(EpisodeFilter(source_type="other")) == set()
        assert by(EpisodeFilter(min_energy=6)) == {"ep-00006", "ep-00013"}

    def test_scan_resumes_from_a_cursor(self, backend: VaultBackend) -> None:
        """Scan returns episodes in seq order after the cursor, and can skip consolidated ones."""
        backend.put_many([make_ep(i) for i in range(10)], 1)
        backend.put_many([make_ep(10, consolidated=True)], 1)
        first = backend.scan(0, 4, False)
        rest = backend.scan(first[-1].seq, 100, False)
        assert [e.id for e in first + rest] == [f"ep-{i:05d}" for i in range(11)]
        assert all(not e.consolidated for e in backend.scan(0, 100, True))
        assert len(backend.scan(0, 100, True)) == 10

    def test_get_missing_is_none_and_delete_missing_is_false(self, backend: VaultBackend) -> None:
        """Unknown ids read as None and delete as False."""
        assert backend.get("nope") is None
        assert backend.delete("nope") is False

    def test_get_many_returns_what_get_returns_for_the_known_ids(
        self, backend: VaultBackend
    ) -> None:
        """get_many is get over a list: the stored episodes by id, unknown ids left out."""
        outcomes = backend.put_many([make_ep(i, embedding=(0.5, -1.0)) for i in range(5)], 7)
        assert all(o.size_bytes > 0 for o in outcomes)
        got = backend.get_many(["ep-00003", "nope", "ep-00000", "ep-00003"])
        assert got == {i: backend.get(i) for i in ("ep-00003", "ep-00000")}
        assert got["ep-00003"].size_bytes == outcomes[3].size_bytes
        assert got["ep-00000"].embedding.tolist() == [0.5, -1.0]
        assert backend.get_many([]) == {}


class TestLifecycle:
    def test_delete_removes_from_every_view(self, backend: VaultBackend) -> None:
        """A deleted episode is gone from get, list, scan and the totals."""
        backend.put_many([make_ep(1), make_ep(2)], 1)
        size_before = backend.totals()[1]
        assert backend.delete("ep-00001") is True
        assert backend.get("ep-00001") is None
        assert [e.id for e in backend.list_recent(EpisodeFilter(tags=("odd",)), 10, None)] == []
        assert [e.id for e in backend.scan(0, 10, False)] == ["ep-00002"]
        count, size = backend.totals()
        assert count == 1 and 0 < size < size_before

    def test_delete_many_removes_the_known_ids_only(self, backend: VaultBackend) -> None:
        """delete_many is delete over a list: it counts what was there (duplicates and unknown
        ids once / not at all) and the rest, totals and stats included, stays."""
        backend.put_many([make_ep(i) for i in range(1200)], 1)
        doomed = [f"ep-{i:05d}" for i in range(0, 1200, 2)]
        assert backend.delete_many([*doomed, "nope", doomed[0]]) == 600
        assert backend.get_many(doomed) == {}
        assert backend.get("ep-00001") is not None
        assert backend.totals()[0] == 600 == backend.stats().episode_count
        assert [e.id for e in backend.scan(0, 3, False)] == ["ep-00001", "ep-00003", "ep-00005"]
        assert backend.delete_many([]) == 0

    def test_purge_expired_keeps_referenced_and_consolidated(self, backend: VaultBackend) -> None:
        """Purge removes old episodes unless ref_count >= keep or consolidated; dry run changes nothing."""
        backend.put_many(
            [make_ep(1), make_ep(2, ref_count=3), make_ep(3, consolidated=True)], stored_ms=1_000
        )
        backend.put_many([make_ep(4)], stored_ms=5_000)
        assert backend.purge_expired(2_000, 3, dry_run=True) == 1
        assert backend.totals()[0] == 4
        assert backend.purge_expired(2_000, 3, dry_run=False) == 1
        assert {e.id for e in backend.scan(0, 10, False)} == {"ep-00002", "ep-00003", "ep-00004"}

    def test_stats_agree_with_contents(self, backend: VaultBackend) -> None:
        """Stats count episodes, bytes, consolidated ones, tiers and the time span."""
        backend.put_many([make_ep(i) for i in range(5)] + [make_ep(5, consolidated=True)], 1)
        s = backend.stats()
        assert s.episode_count == 6 and s.consolidated_count == 1 and s.unconsolidated_count == 5
        assert s.size_bytes == backend.totals()[1] == sum(t.size_bytes for t in s.tiers)
        assert sum(t.episode_count for t in s.tiers) == 6
        assert s.oldest_ms == 1_700_000_000_000 and s.newest_ms == 1_700_000_000_005

    def test_reopen_keeps_everything_for_durable_backends(self, opener: Opener) -> None:
        """Closing and reopening a durable backend gives back every episode and the seq counter."""
        if not opener.durable:  # type: ignore[attr-defined]
            pytest.skip("the memory backend without a snapshot file keeps nothing by design")
        b = opener()
        b.put_many([make_ep(i) for i in range(30)], 1)
        b.delete("ep-00029")
        before = b.scan(0, 100, False)
        last = b.stats().last_seq
        b.close()
        b2 = opener()
        assert b2.scan(0, 100, False) == before
        assert b2.stats().last_seq == last
        (new,) = b2.put_many([make_ep(99)], 2)
        assert new.seq > last


class TestBackendSpecific:
    def test_sqlite_refuses_a_newer_schema(self, tmp_path: Path) -> None:
        """A database written by a newer release is refused, naming the versions."""
        import sqlite3

        path = tmp_path / "v.db"
        SqliteBackend(SqliteConfig(), path).close()
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        with pytest.raises(SchemaTooNew, match="schema version 99"):
            SqliteBackend(SqliteConfig(), path)

    def test_sqlite_settings_take_effect(self, tmp_path: Path) -> None:
        """journal_mode, synchronous and cache_size from config are what the connection runs with."""
        b = SqliteBackend(
            SqliteConfig(journal_mode="WAL", synchronous="NORMAL", cache_size_kb=1234),
            tmp_path / "s.db",
        )
        conn = b._writer
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -1234
        b.close()

    def test_memory_capacity_refuses_and_stores_nothing(self) -> None:
        """Beyond vault.memory.capacity a put raises CapacityExceeded and changes nothing."""
        b = MemoryBackend(MemoryConfig(capacity=3), None)
        b.put_many([make_ep(1), make_ep(2)], 1)
        with pytest.raises(CapacityExceeded, match="capacity"):
            b.put_many([make_ep(3), make_ep(4)], 1)
        assert b.totals()[0] == 2


class TestRedisBackend:
    def test_settings_take_effect(self, redis_prefix: str) -> None:
        """Pool size, timeouts and key prefix from config are what the client runs with, and a
        batch_size smaller than a page still lists every match."""
        b = RedisBackend(
            redis_config(
                redis_prefix, max_connections=3, pool_timeout_s=1.5, connect_timeout_s=0.7,
                socket_timeout_s=2.5, batch_size=2,
            )
        )  # fmt: skip
        pool = b._pool
        assert pool.max_connections == 3 and pool.timeout == 1.5
        assert pool.connection_kwargs["socket_connect_timeout"] == 0.7
        assert pool.connection_kwargs["socket_timeout"] == 2.5
        b.put_many([make_ep(i) for i in range(9)], 1)
        evens = b.list_recent(EpisodeFilter(tags=("even",)), 100, None)
        assert [e.id for e in evens] == [f"ep-{i:05d}" for i in (8, 6, 4, 2, 0)]
        assert b.purge_expired(2, 3, dry_run=False) == 9 and b.totals() == (0, 0)
        b.close()
        with redis.Redis.from_url(REDIS_URL) as r:
            keys = {k.decode() for k in r.scan_iter(match=redis_prefix + "*")}
        assert keys and all(k.startswith(redis_prefix) for k in keys)

    def test_two_prefixes_share_one_redis_without_seeing_each_other(
        self, redis_prefix: str
    ) -> None:
        """Vaults under different key prefixes keep separate episodes, seqs and totals."""
        a = RedisBackend(redis_config(redis_prefix + "a:"))
        b = RedisBackend(redis_config(redis_prefix + "b:"))
        a.put_many([make_ep(1), make_ep(2)], 1)
        assert b.get("ep-00001") is None and b.totals() == (0, 0)
        (out,) = b.put_many([make_ep(1, content_hash="other")], 1)
        assert out.status is PutStatus.CREATED and out.seq == 1
        a.close()
        b.close()

    def test_password_from_config_authenticates(self, redis_prefix: str) -> None:
        """vault.redis.password is sent when the URL has none; the ACL user sees only its prefix."""
        user = redis_prefix.replace(":", "-").rstrip("-")
        with redis.Redis.from_url(REDIS_URL) as admin:
            admin.acl_setuser(
                user, enabled=True, passwords=["+s3cret"], keys=[redis_prefix + "*"],
                commands=["+@all"],
            )  # fmt: skip
        try:
            url = REDIS_URL.replace("redis://", f"redis://{user}@", 1)
            b = RedisBackend(VaultRedisConfig(url=url, password="s3cret", key_prefix=redis_prefix))
            b.put_many([make_ep(1)], 1)
            assert b.get("ep-00001") is not None
            b.close()
            with pytest.raises(BackendUnavailable, match=r"vault\.redis\.password"):
                RedisBackend(VaultRedisConfig(url=url, password="wrong", key_prefix=redis_prefix))
        finally:
            with redis.Redis.from_url(REDIS_URL) as admin:
                admin.acl_deluser(user)

    def test_refuses_a_newer_key_layout(self, redis_prefix: str) -> None:
        """Keys written by a newer release are refused, naming the versions."""
        RedisBackend(redis_config(redis_prefix)).close()
        with redis.Redis.from_url(REDIS_URL) as r:
            r.hset(redis_prefix + "meta", "format", 99)
        with pytest.raises(SchemaTooNew, match="layout version 99"):
            RedisBackend(redis_config(redis_prefix))

    def test_unreachable_server_is_unavailable(self) -> None:
        """No server at the URL: BackendUnavailable naming the config key."""
        cfg = VaultRedisConfig(url="redis://:pw@127.0.0.1:1/0", connect_timeout_s=0.5)
        with pytest.raises(BackendUnavailable, match=r"vault\.redis\.url") as info:
            RedisBackend(cfg)
        assert "pw" not in str(info.value)

    def test_rediss_url_speaks_tls(self, redis_prefix: str) -> None:
        """A rediss:// URL makes a TLS connection: a plain-text server cannot answer it."""
        url = REDIS_URL.replace("redis://", "rediss://", 1)
        cfg = VaultRedisConfig(url=url, tls_verify=False, connect_timeout_s=1, socket_timeout_s=1)
        with pytest.raises(BackendUnavailable):
            RedisBackend(cfg)


class TestPostgresBackend:
    def test_refuses_a_newer_schema(self, pg_schema: str) -> None:
        """A schema written by a newer release is refused, naming the versions."""
        PostgresBackend(postgres_config(pg_schema)).close()
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'UPDATE "{pg_schema}".schema_version SET version = 99')
        with pytest.raises(SchemaTooNew, match="schema version 99"):
            PostgresBackend(postgres_config(pg_schema))

    def test_settings_take_effect(self, pg_schema: str) -> None:
        """Pool sizes, pool timeout, statement timeout and schema from config are what the
        connections run with; a purge larger than batch_size deletes in several batches."""
        b = PostgresBackend(
            postgres_config(
                pg_schema, pool_min_size=2, pool_max_size=3, pool_timeout_s=4.5,
                statement_timeout_ms=1234, batch_size=2,
            )
        )  # fmt: skip
        assert (b._pool.min_size, b._pool.max_size, b._pool.timeout) == (2, 3, 4.5)
        with b._pool.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
            assert conn.execute("SELECT current_schema()").fetchone() == (pg_schema,)
        b.put_many([make_ep(i) for i in range(5)], 1)
        assert b.purge_expired(2, 3, dry_run=False) == 5 and b.totals() == (0, 0)
        b.close()

    def test_counters_follow_changes_made_by_hand(self, pg_schema: str) -> None:
        """Totals and stats stay right when an operator deletes or updates rows with SQL."""
        b = PostgresBackend(postgres_config(pg_schema))
        b.put_many([make_ep(i) for i in range(4)], 1)
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f"DELETE FROM \"{pg_schema}\".episodes WHERE id = 'ep-00000'")
            conn.execute(
                f"UPDATE \"{pg_schema}\".episodes SET consolidated = true WHERE id = 'ep-00001'"
            )
        s = b.stats()
        assert s.episode_count == 3 == b.totals()[0] and s.consolidated_count == 1
        assert s.size_bytes == sum(e.size_bytes for e in b.scan(0, 10, False))
        b.close()

    def test_unreachable_server_is_unavailable(self) -> None:
        """No server at the DSN: BackendUnavailable naming the config key, without the password."""
        cfg = VaultPostgresConfig(
            dsn="postgresql://postgres:pw-secret@127.0.0.1:1/postgres", connect_timeout_s=2
        )
        with pytest.raises(BackendUnavailable, match=r"vault\.postgres\.dsn") as info:
            PostgresBackend(cfg)
        assert "pw-secret" not in str(info.value)


class TestServerBackendConfig:
    def test_open_backend_opens_the_configured_server_backend(
        self, redis_prefix: str, pg_schema: str
    ) -> None:
        """vault.backend redis / postgres opens that backend with its sub-config."""
        r = open_backend(VaultConfig(backend="redis", redis=redis_config(redis_prefix)))
        p = open_backend(VaultConfig(backend="postgres", postgres=postgres_config(pg_schema)))
        assert (r.name, p.name) == ("redis", "postgres")
        r.close()
        p.close()

    @pytest.mark.parametrize(
        ("sub", "bad", "message"),
        [
            ("redis", {"prefix": "x"}, "Extra inputs"),
            ("redis", {"url": "http://h"}, "redis://"),
            ("redis", {"key_prefix": ""}, "must not be empty"),
            ("redis", {"tls_ca_file": "/ca.pem"}, r"tls_ca_file only applies to TLS"),
            ("redis", {"url": "rediss://h", "tls_cert_file": "/c.pem"}, "go together"),
            ("postgres", {"pool_size": 3}, "Extra inputs"),
            ("postgres", {"schema_name": "Bad-Name"}, "pattern"),
            ("postgres", {"pool_min_size": 5, "pool_max_size": 2}, "pool_max_size"),
        ],
    )
    def test_bad_keys_are_rejected(self, sub: str, bad: dict[str, object], message: str) -> None:
        """Unknown keys and bad values under vault.redis / vault.postgres fail validation."""
        with pytest.raises(ValueError, match=message):
            VaultConfig.model_validate({sub: bad})


class TestMarkConsolidated:
    def test_marking_moves_episodes_to_ltm_and_out_of_the_unconsolidated_scan(
        self, backend: VaultBackend
    ) -> None:
        """Marked episodes are consolidated, in LTM with the graph version, and leave the scan."""
        backend.put_many([make_ep(i) for i in range(6)], 1)
        out = backend.mark_consolidated(["ep-00001", "ep-00003"], graph_version=7)
        assert (out.marked, out.already, out.missing) == (2, 0, ())
        got = backend.get("ep-00001")
        assert got is not None and got.consolidated and got.tier is Tier.LTM
        assert got.graph_version == 7
        untouched = backend.get("ep-00002")
        assert untouched is not None and not untouched.consolidated
        assert untouched.tier is Tier.MTM and untouched.graph_version == 0
        left = [e.id for e in backend.scan(0, 100, True)]
        assert left == ["ep-00000", "ep-00002", "ep-00004", "ep-00005"]
        assert len(backend.scan(0, 100, False)) == 6

    def test_stats_count_marked_episodes_as_consolidated_per_tier(
        self, backend: VaultBackend
    ) -> None:
        """Stats move the marked episodes' counts and bytes from MTM to LTM."""
        backend.put_many([make_ep(i) for i in range(5)], 1)
        before = backend.stats()
        backend.mark_consolidated(["ep-00000", "ep-00004"], 1)
        s = backend.stats()
        assert s.consolidated_count == 2 and s.unconsolidated_count == 3
        tiers = {t.tier: t for t in s.tiers}
        e0, e4 = backend.get("ep-00000"), backend.get("ep-00004")
        assert e0 is not None and e4 is not None
        assert tiers[Tier.LTM].episode_count == 2
        assert tiers[Tier.LTM].size_bytes == e0.size_bytes + e4.size_bytes
        assert tiers[Tier.MTM].episode_count == 3
        assert s.size_bytes == before.size_bytes == sum(t.size_bytes for t in s.tiers)

    def test_marking_is_idempotent_and_keeps_the_first_version(self, backend: VaultBackend) -> None:
        """A second mark reports `already`, changes nothing, and duplicates count once."""
        backend.put_many([make_ep(i) for i in range(3)], 1)
        backend.mark_consolidated(["ep-00000"], 3)
        out = backend.mark_consolidated(["ep-00000", "ep-00001", "ep-00001"], 5)
        assert (out.marked, out.already, out.missing) == (1, 1, ())
        first = backend.get("ep-00000")
        assert first is not None and first.graph_version == 3
        assert backend.stats().consolidated_count == 2

    def test_unknown_ids_are_reported_missing_in_request_order(self, backend: VaultBackend) -> None:
        """Ids the store does not hold come back as missing; the known ones are still marked."""
        backend.put_many([make_ep(1)], 1)
        backend.delete("ep-00001")
        backend.put_many([make_ep(2)], 1)
        out = backend.mark_consolidated(["zz", "ep-00001", "ep-00002", "zz"], 1)
        assert (out.marked, out.already, out.missing) == (1, 0, ("zz", "ep-00001"))

    def test_marked_episodes_survive_the_ttl_purge(self, backend: VaultBackend) -> None:
        """Consolidated episodes are never purged by TTL."""
        backend.put_many([make_ep(1), make_ep(2)], stored_ms=1_000)
        backend.mark_consolidated(["ep-00001"], 1)
        assert backend.purge_expired(2_000, 3, dry_run=False) == 1
        assert [e.id for e in backend.scan(0, 10, False)] == ["ep-00001"]

    def test_marks_survive_reopening_durable_backends(self, opener: Opener) -> None:
        """A mark is durable: after close and reopen the episode is still consolidated."""
        if not opener.durable:  # type: ignore[attr-defined]
            pytest.skip("the memory backend without a snapshot file keeps nothing by design")
        b = opener()
        b.put_many([make_ep(i) for i in range(3)], 1)
        b.mark_consolidated(["ep-00002"], 4)
        b.close()
        b2 = opener()
        got = b2.get("ep-00002")
        assert got is not None and got.consolidated and got.graph_version == 4
        assert [e.id for e in b2.scan(0, 10, True)] == ["ep-00000", "ep-00001"]
        assert b2.stats().consolidated_count == 1

    def test_sqlite_migration_2_moves_consolidated_episodes_to_ltm(self, tmp_path: Path) -> None:
        """A version-1 database opens migrated: graph_version added, consolidated rows in LTM."""
        import sqlite3

        from mcp_services.episodic_vault.adapters.body import encode_body
        from mcp_services.episodic_vault.adapters.sqlite_backend import MIGRATIONS

        path = tmp_path / "v1.db"
        conn = sqlite3.connect(path)
        conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
        for i, cons in ((1, 0), (2, 1)):
            body = encode_body(make_ep(i))
            conn.execute(
                "INSERT INTO episodes (id, ts_ms, stored_ms, source_type, energy, ref_count, tier,"
                " consolidated, content_hash, size_bytes, body) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (f"ep-{i:05d}", i, 1, "test", 0.0, 0, 2, cons, f"hash-{i}", len(body), body),
            )
        conn.commit()
        conn.close()
        b = SqliteBackend(SqliteConfig(), path)
        one, two = b.get("ep-00001"), b.get("ep-00002")
        assert one is not None and one.tier is Tier.MTM and not one.consolidated
        assert two is not None and two.tier is Tier.LTM and two.consolidated
        assert two.graph_version == 0
        b.close()
