"""Namespaces over gRPC: every RPC of one namespace sees and changes only that namespace's episodes,
on every backend, and an existing store is the default namespace as it lies."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from mcp_services.common.namespaces import HEADER
from mcp_services.episodic_vault.adapters.sqlite_backend import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SqliteBackend,
)
from mcp_services.episodic_vault.namespaces import postgres_schema
from mcp_services.episodic_vault.rpc.validation import validate_episode
from mcp_services.episodic_vault.settings import SqliteConfig
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.ops.cli import main as ops_main
from tests.conftest import SettingsFactory
from tests.episodic_vault.conftest import Vault, VaultFactory, good_episode
from tests.episodic_vault.test_backend_contract import (
    POSTGRES_DSN,
    REDIS_URL,
    pg_schema,  # noqa: F401  (a fixture, used by name)
    redis_prefix,  # noqa: F401  (a fixture, used by name)
)

ALICE = (("x-tori-namespace", "alice"),)
BOB = (("x-tori-namespace", "bob"),)


def episode(i: int, owner: str) -> pb.Episode:
    """An episode whose payload, tag and concepts name its owner, so a leak is visible."""
    ep = good_episode(i)
    ep.payload = f"{owner}-payload-{i}".encode()
    ep.tags[:] = [f"{owner}-tag"]
    ep.activation.concept_ids[:] = [f"concept:{owner}-{i}", f"concept:{owner}-shared"]
    return ep


@pytest.fixture
def pg_schema_with_namespaces(request: pytest.FixtureRequest) -> Iterator[str]:
    """pg_schema, and afterwards its namespaces' schemas dropped as well."""
    schema: str = request.getfixturevalue("pg_schema")
    yield schema
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        for ns in ("alice", "bob"):
            conn.execute(f'DROP SCHEMA IF EXISTS "{postgres_schema(schema, ns)}" CASCADE')


@pytest.fixture(params=["sqlite", "memory", "redis", "postgres"])
def vault(request: pytest.FixtureRequest, start_vault: VaultFactory) -> Vault:
    overrides: dict[str, Any] = {"backend": request.param, "embedding_dim": 8}
    if request.param == "redis":
        overrides["redis"] = {
            "url": REDIS_URL,
            "key_prefix": request.getfixturevalue("redis_prefix"),
        }
    if request.param == "postgres":
        overrides["postgres"] = {
            "dsn": POSTGRES_DSN,
            "schema_name": request.getfixturevalue("pg_schema_with_namespaces"),
            "pool_min_size": 1,
            "pool_max_size": 4,
        }
    return start_vault(vault=overrides)


def _ids(episodes: Any) -> set[str]:
    return {e.id for e in episodes}


class TestIsolation:
    def test_ids_are_unique_per_namespace_not_across_them(self, vault: Vault) -> None:
        """Bob's put of Alice's id makes a second episode in bob, and Alice's put still works."""
        stub = vault.stub
        mine = stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(1, "bob")), metadata=BOB)
        assert mine.result.status == pb.PUT_STATUS_CREATED
        hers = stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(1, "alice")), metadata=ALICE)
        assert hers.result.status == pb.PUT_STATUS_CREATED
        again = stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(1, "alice")), metadata=ALICE)
        assert again.result.status == pb.PUT_STATUS_EXISTING
        got = stub.GetEpisode(pb.GetEpisodeRequest(id="ep-1"), metadata=ALICE).episode
        assert got.payload == b"alice-payload-1"
        got = stub.GetEpisode(pb.GetEpisodeRequest(id="ep-1"), metadata=BOB).episode
        assert got.payload == b"bob-payload-1"
        with pytest.raises(grpc.RpcError) as err:
            stub.GetEpisode(pb.GetEpisodeRequest(id="ep-1"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

    def test_every_read_sees_only_the_callers_namespace(self, vault: Vault) -> None:
        """Get, ListRecent, Scan, GetStats, Search and Recall of bob never return alice's."""
        stub = vault.stub
        stub.PutEpisodes(
            iter(pb.PutEpisodeRequest(episode=episode(i, "alice")) for i in range(5)),
            metadata=ALICE,
        )
        stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(100, "bob")), metadata=BOB)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetEpisode(pb.GetEpisodeRequest(id="ep-0"), metadata=BOB)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "alice" not in (err.value.details() or "")
        listed = stub.ListRecent(pb.ListRecentRequest(page_size=100), metadata=BOB).episodes
        assert _ids(listed) == {"ep-100"}
        scanned = [r.episode for r in stub.Scan(pb.ScanRequest(), metadata=BOB)]
        assert _ids(scanned) == {"ep-100"}
        stats = stub.GetStats(pb.GetStatsRequest(), metadata=BOB)
        assert (stats.episode_count, stats.last_seq) == (1, 1)
        assert stub.GetStats(pb.GetStatsRequest(), metadata=ALICE).episode_count == 5
        search = stub.Search(pb.SearchRequest(embedding=[1.0] * 8, k=50), metadata=BOB)
        assert _ids(h.episode for h in search.hits) == {"ep-100"}
        assert search.index_size == 1
        cue = pb.ConceptActivation(concept_ids=["concept:alice-shared"], strengths=[1.0])
        recall = stub.Recall(pb.RecallRequest(cue=cue, k=50), metadata=BOB)
        assert list(recall.hits) == []
        assert "alice-payload" not in str(recall) and "concept:alice-0" not in str(recall)
        filtered = stub.ListRecent(
            pb.ListRecentRequest(filter=pb.EpisodeFilter(tags=["alice-tag"])), metadata=BOB
        )
        assert list(filtered.episodes) == []

    def test_writes_of_one_namespace_never_change_another(self, vault: Vault) -> None:
        """Bob's mark, delete and purge leave alice's episodes as they were."""
        stub = vault.stub
        stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(7, "alice")), metadata=ALICE)
        marked = stub.MarkConsolidated(
            pb.MarkConsolidatedRequest(episode_ids=["ep-7"], graph_version=1), metadata=BOB
        )
        assert (marked.marked, list(marked.missing)) == (0, ["ep-7"])
        assert not stub.DeleteEpisode(pb.DeleteEpisodeRequest(id="ep-7"), metadata=BOB).deleted
        purged = stub.PurgeTTL(pb.PurgeTTLRequest(ttl_hours=1e-9), metadata=BOB)
        assert purged.purged == 0
        kept = stub.GetEpisode(pb.GetEpisodeRequest(id="ep-7"), metadata=ALICE).episode
        assert (kept.payload, kept.consolidated) == (b"alice-payload-7", False)
        assert stub.GetStats(pb.GetStatsRequest(), metadata=ALICE).episode_count == 1


class TestRefusals:
    def test_a_bad_namespace_is_invalid_argument_naming_the_header(
        self, start_vault: VaultFactory
    ) -> None:
        """A malformed x-tori-namespace is refused with the header and the form named, and
        nothing is stored."""
        v = start_vault(vault={"backend": "sqlite", "embedding_dim": 8})
        for name in ["", "../etc", "a/b", "-lead", "x" * 65, "sp ace", ".dot", "a;b"]:
            with pytest.raises(grpc.RpcError) as err:
                v.stub.PutEpisode(
                    pb.PutEpisodeRequest(episode=episode(1, "x")), metadata=((HEADER, name),)
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert HEADER in (err.value.details() or "")
            assert "1-64 characters" in (err.value.details() or "")
        assert v.count() == 0
        data = Path(v.settings.vault.sqlite.path).parent
        assert not (data / "namespaces").exists()

    def test_the_header_sent_twice_is_refused(self, start_vault: VaultFactory) -> None:
        """Two x-tori-namespace values are INVALID_ARGUMENT (never one of them picked, which a
        proxy might pick differently), and nothing is stored in either namespace."""
        v = start_vault(vault={"backend": "sqlite", "embedding_dim": 8})
        with pytest.raises(grpc.RpcError) as err:
            v.stub.PutEpisode(
                pb.PutEpisodeRequest(episode=episode(1, "x")),
                metadata=((HEADER, "alice"), (HEADER, "bob")),
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sent 2 times" in (err.value.details() or "")
        assert v.count() == 0
        data = Path(v.settings.vault.sqlite.path).parent
        assert not (data / "namespaces").exists()


class TestStorage:
    def test_a_namespace_survives_a_restart_beside_the_default_store(
        self, start_vault: VaultFactory, make_settings: SettingsFactory
    ) -> None:
        """Bob's episodes live under data/namespaces/bob/ and are there after a restart, while
        the default store stays at vault.sqlite.path."""
        settings = make_settings(vault={"backend": "sqlite", "embedding_dim": 8})
        v = start_vault(settings)
        v.stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(3, "bob")), metadata=BOB)
        v.server.stop()
        db = Path(settings.vault.sqlite.path)
        assert (db.parent / "namespaces" / "bob" / db.name).exists()
        v2 = start_vault(settings)
        got = v2.stub.GetEpisode(pb.GetEpisodeRequest(id="ep-3"), metadata=BOB).episode
        assert got.payload == b"bob-payload-3"
        assert v2.count() == 0

    def test_an_existing_database_is_the_default_namespace(
        self, start_vault: VaultFactory, make_settings: SettingsFactory, tmp_path: Path
    ) -> None:
        """A database written before namespaces (by the backend as it was) migrates as before,
        and its episodes are the default namespace's: readable without the header, absent from
        any other namespace, whose puts of the same ids are their own."""
        settings = make_settings(vault={"backend": "sqlite", "embedding_dim": 8})
        db = Path(settings.vault.sqlite.path)
        legacy = SqliteBackend(SqliteConfig(), db)
        legacy.put_many(
            [validate_episode(episode(i, "old"), settings.vault, 1) for i in range(3)], 1
        )
        legacy.close()
        spec = f"sqlite:path={db}"
        assert ops_main(["migrate", "--check", "--backend", spec]) == 0
        v = start_vault(settings)
        assert v.count() == 3
        old = v.stub.GetEpisode(pb.GetEpisodeRequest(id="ep-0")).episode
        assert old.payload == b"old-payload-0"
        assert v.stub.GetStats(pb.GetStatsRequest(), metadata=BOB).episode_count == 0
        put = v.stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(0, "bob")), metadata=BOB)
        assert put.result.status == pb.PUT_STATUS_CREATED
        assert v.count() == 3


class TestKeysBoundToNamespaces:
    def test_a_key_may_use_only_its_namespaces(self, start_vault: VaultFactory) -> None:
        """A service key bound to alice is refused (PERMISSION_DENIED naming the namespace, not
        the key) for bob and for the default namespace, and works in alice."""
        alice_key = "alice-service-key-0123456789abcdef"
        v = start_vault(
            vault={"backend": "memory", "embedding_dim": 8},
            auth={"api_keys": [f"{alice_key} write alice"]},
        )
        auth = (("authorization", f"Bearer {alice_key}"),)
        put = pb.PutEpisodeRequest(episode=episode(1, "alice"))
        assert v.stub.PutEpisode(put, metadata=auth + ALICE).result.status == (
            pb.PUT_STATUS_CREATED
        )
        for other, namespace in ((BOB, "bob"), ((), "default")):
            with pytest.raises(grpc.RpcError) as err:
                v.stub.GetStats(pb.GetStatsRequest(), metadata=auth + other)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            details = err.value.details() or ""
            assert repr(namespace) in details and alice_key not in details


class TestMigrate:
    def test_tori_ops_migrate_brings_every_namespace_store_forward(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A namespace's SQLite store left at an older schema is reported by migrate --check
        (exit 1, named by its namespace) and brought to this release's version by migrate."""
        db = tmp_path / "data" / "vault.db"
        SqliteBackend(SqliteConfig(), db).close()
        old = db.parent / "namespaces" / "bob" / db.name
        old.parent.mkdir(parents=True)
        with sqlite3.connect(old) as conn:  # the release that wrote schema version 1
            conn.executescript(f"{MIGRATIONS[0]}; PRAGMA user_version = 1;")
        spec = f"sqlite:path={db}"
        assert ops_main(["migrate", "--check", "--backend", spec]) == 1
        assert f"namespace bob: sqlite {old}" in capsys.readouterr().out
        assert ops_main(["migrate", "--backend", spec]) == 0
        assert f"-> {SCHEMA_VERSION}" in capsys.readouterr().out
        assert ops_main(["migrate", "--check", "--backend", spec]) == 0
