"""tori-ops migrate / init-db / diagnostic against real SQLite, PostgreSQL and Redis stores."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg

from mcp_services.episodic_vault.adapters import sqlite_backend
from tests.episodic_vault.test_backend_contract import POSTGRES_DSN, REDIS_URL
from tests.ops.runner import ops

RELEASE = sqlite_backend.SCHEMA_VERSION


class TestSqlite:
    def test_check_init_and_idempotence(self, tmp_path: Path) -> None:
        spec = f"sqlite:path={tmp_path / 'v.db'}"
        missing = ops(None, "migrate", "--check", "--backend", spec)
        assert missing.returncode == 1
        assert f"stored version none (no store yet), this release {RELEASE}" in missing.stdout
        assert not (tmp_path / "v.db").exists(), "--check must not create the store"
        for _ in range(2):
            init = ops(None, "init-db", "--backend", spec)
            assert init.returncode == 0, init.stderr
            assert f"ready at schema version {RELEASE} (0 episodes)" in init.stdout
        assert "up to date" in ops(None, "migrate", "--check", "--backend", spec).stdout

    def test_migrates_an_old_store_forward(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        with sqlite3.connect(path) as conn:  # a store as release 1 left it
            conn.executescript(
                f"BEGIN; {sqlite_backend.MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;"
            )
        spec = f"sqlite:path={path}"
        assert "would migrate to" in ops(None, "migrate", "--check", "--backend", spec).stdout
        result = ops(None, "migrate", "--backend", spec)
        assert result.returncode == 0, result.stderr
        assert f"schema version 1 -> {RELEASE}" in result.stdout

    def test_refuses_a_newer_store_and_leaves_it_alone(self, tmp_path: Path) -> None:
        path = tmp_path / "new.db"
        with sqlite3.connect(path) as conn:
            conn.execute(f"PRAGMA user_version = {RELEASE + 5}")
        result = ops(None, "migrate", "--backend", f"sqlite:path={path}")
        assert result.returncode == 1
        assert "never run backwards" in result.stderr
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == RELEASE + 5


class TestServers:
    def test_postgres_init_migrate_and_refusal(self, pg_schema: str) -> None:
        spec = f"postgres:dsn={POSTGRES_DSN},schema_name={pg_schema}"
        assert ops(None, "migrate", "--check", "--backend", spec).returncode == 1
        assert ops(None, "init-db", "--backend", spec).returncode == 0
        ok = ops(None, "migrate", "--check", "--backend", spec)
        assert ok.returncode == 0 and "up to date" in ok.stdout
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'UPDATE "{pg_schema}".schema_version SET version = 99')
        refused = ops(None, "migrate", "--backend", spec)
        assert refused.returncode == 1
        assert "newer than this release" in refused.stderr

    def test_diagnostic_masks_passwords(self, pg_schema: str, redis_prefix: str) -> None:
        dsn = POSTGRES_DSN.replace("postgres@", "postgres:s3cret@", 1)
        pg = ops(None, "diagnostic", "--json", "--rounds", "5", "--backend",
                  f"postgres:dsn={dsn},schema_name={pg_schema}")  # fmt: skip
        assert pg.returncode == 0, pg.stderr
        report = json.loads(pg.stdout)
        assert "s3cret" not in pg.stdout
        assert report["settings"]["dsn"].startswith("postgresql://postgres:***@")
        assert report["schema_version"] == report["release_schema_version"]
        assert report["episodes"] == 0 and report["get_ms_p50"] > 0
        rd = ops(None, "diagnostic", "--json", "--backend",
                  f"redis:url={REDIS_URL},key_prefix={redis_prefix},password=hunter2")  # fmt: skip
        assert "hunter2" not in rd.stdout
        assert json.loads(rd.stdout)["settings"]["password"] == "***"

    def test_unreachable_backend_is_named(self) -> None:
        result = ops(None, "diagnostic", "--backend", "redis:url=redis://127.0.0.1:1/0")
        assert result.returncode == 1
        assert "127.0.0.1:1" in result.stderr
