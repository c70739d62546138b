"""`tori-ops migrate`, `tori-ops init-db` and `tori-ops diagnostic`: a vault backend's schema and
health, from the operator's side.

Backends migrate forward when they open and refuse a store written by a newer release
(migrations never run backwards). ``migrate --check`` reads the stored version without touching
anything; ``migrate`` brings the store to this release's version and says from what;
``init-db`` creates an empty store (directories, schema, keys) and is safe to repeat.
``diagnostic`` connects, times a few round trips, and prints sizes and the settings in force
(passwords masked).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import time
from typing import Any

import psycopg
import redis

from mcp_services.common.config import resolve_path
from mcp_services.common.secrets_mask import mask_secret
from mcp_services.episodic_vault.adapters import postgres_backend, redis_backend, sqlite_backend
from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.domain.backend import BackendError, SchemaTooNew, VaultBackend
from mcp_services.episodic_vault.namespaces import namespace_config, stored_namespaces
from mcp_services.episodic_vault.settings import VaultConfig
from mcp_services.ops.backend_spec import SpecError, describe, vault_config


def release_version(cfg: VaultConfig) -> int:
    """The schema version this release writes for the backend (0: nothing to version)."""
    if cfg.backend == "sqlite":
        return sqlite_backend.SCHEMA_VERSION
    if cfg.backend == "postgres":
        return postgres_backend.SCHEMA_VERSION
    if cfg.backend == "redis":
        return int(redis_backend.FORMAT_VERSION)
    return 0


def stored_version(cfg: VaultConfig) -> int | None:
    """The version the store holds now, read without migrating; None when there is no store."""
    if cfg.backend == "sqlite":
        path = resolve_path(cfg.sqlite.path)
        if not path.exists():
            return None
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
    if cfg.backend == "postgres":
        pg = cfg.postgres
        with psycopg.connect(pg.dsn, connect_timeout=max(2, int(pg.connect_timeout_s))) as conn:
            exists = conn.execute(
                "SELECT to_regclass(%s)", (f'"{pg.schema_name}".schema_version',)
            ).fetchone()
            if not exists or exists[0] is None:
                return None
            row = conn.execute(
                f'SELECT version FROM "{pg.schema_name}".schema_version WHERE id = 1'
            ).fetchone()
            return int(row[0]) if row else None
    if cfg.backend == "redis":
        client = redis.Redis.from_url(cfg.redis.url, password=cfg.redis.password or None)
        try:
            found = client.hget(cfg.redis.key_prefix + redis_backend._META, "format")
        finally:
            client.close()
        return int(found) if found is not None else None
    return None


def _open(spec: str | None) -> tuple[VaultConfig, VaultBackend]:
    cfg = vault_config(spec)
    return cfg, open_backend(cfg)


def add_migrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="KIND[:key=value,...]; default: the configured backend")
    p.add_argument("--check", action="store_true", help="only report; change nothing")


def run_migrate(args: argparse.Namespace) -> int:
    """Migrate (or with --check, report) the store and every namespace's store found beside it
    (SQLite and memory; a Redis or PostgreSQL namespace migrates when the vault first opens it)."""
    try:
        cfg = vault_config(args.backend)
    except (SpecError, BackendError, OSError, psycopg.Error, redis.RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stores = [("", cfg)] + [
        (f"namespace {ns}: ", namespace_config(cfg, ns)) for ns in stored_namespaces(cfg)
    ]
    return max(_migrate(ns_cfg, label, args.check) for label, ns_cfg in stores)


def _migrate(cfg: VaultConfig, label: str, check: bool) -> int:
    try:
        before = stored_version(cfg)
    except (BackendError, OSError, psycopg.Error, redis.RedisError) as exc:
        print(f"error: {label}{exc}", file=sys.stderr)
        return 2
    target = release_version(cfg)
    where = label + describe(cfg)
    shown = "none (no store yet)" if before is None else str(before)
    if before is not None and before > target:
        print(
            f"error: {where} is at schema version {before}, newer than this release's {target}; "
            "run the release that wrote it (migrations never run backwards)",
            file=sys.stderr,
        )
        return 1
    if check:
        pending = "up to date" if before == target else f"would migrate to {target}"
        print(f"{where}: stored version {shown}, this release {target}: {pending}")
        return 0 if before == target else 1
    try:
        open_backend(cfg).close()
    except SchemaTooNew as exc:  # a newer release wrote it between the check and the open
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{where}: schema version {shown} -> {stored_version(cfg)}")
    return 0


def add_init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="KIND[:key=value,...]; default: the configured backend")


def run_init(args: argparse.Namespace) -> int:
    try:
        cfg, backend = _open(args.backend)
    except (SpecError, BackendError, SchemaTooNew) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        stats = backend.stats()
    finally:
        backend.close()
    print(
        f"{describe(cfg)}: ready at schema version {stored_version(cfg) or release_version(cfg)} "
        f"({stats.episode_count} episodes)"
    )
    return 0


def _masked(settings: dict[str, Any]) -> dict[str, Any]:
    return {key: mask_secret(key, value) for key, value in settings.items()}


def diagnose(spec: str | None, rounds: int) -> dict[str, Any]:
    cfg = vault_config(spec)
    start = time.perf_counter()
    backend = open_backend(cfg)
    connect_ms = (time.perf_counter() - start) * 1e3
    try:
        gets, scans = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            backend.get("tori-ops-diagnostic-probe")
            gets.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            backend.scan(0, 10, False)
            scans.append((time.perf_counter() - t) * 1e3)
        stats = backend.stats()
    finally:
        backend.close()
    section = getattr(cfg, cfg.backend).model_dump()
    return {
        "backend": describe(cfg),
        "open_ms": round(connect_ms, 2),
        "get_ms_p50": round(statistics.median(gets), 3),
        "get_ms_max": round(max(gets), 3),
        "scan10_ms_p50": round(statistics.median(scans), 3),
        "schema_version": stored_version(cfg),
        "release_schema_version": release_version(cfg),
        "episodes": stats.episode_count,
        "consolidated": stats.consolidated_count,
        "size_bytes": stats.size_bytes,
        "tiers": {t.tier.name: t.episode_count for t in stats.tiers},
        "settings": _masked(section),
    }


def add_diagnostic_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="KIND[:key=value,...]; default: the configured backend")
    p.add_argument("--rounds", type=int, default=20, help="timed round trips (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON document")


def run_diagnostic(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        print("error: --rounds must be >= 1", file=sys.stderr)
        return 2
    try:
        report = diagnose(args.backend, args.rounds)
    except (SpecError, BackendError, SchemaTooNew) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:<24} {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tori-ops migrate", description=__doc__)
    add_migrate_arguments(p)
    return run_migrate(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
