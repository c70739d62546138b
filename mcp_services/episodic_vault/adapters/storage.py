"""Vault storage backends, chosen by vault.backend, and everything else that depends on which
one is configured: where a store's vector index, streamed batches and disk reserve live, the name
its index is bound to, and whether its writes are gated on the local disk. The domain
(domain/store.py) is handed these and never asks which backend it runs on.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from mcp_services.common.config import resolve_path
from mcp_services.common.namespaces import NAMESPACES_DIR
from mcp_services.episodic_vault.adapters.memory_backend import MemoryBackend
from mcp_services.episodic_vault.adapters.postgres_backend import PostgresBackend
from mcp_services.episodic_vault.adapters.postgres_backend import redacted as pg_redacted
from mcp_services.episodic_vault.adapters.redis_backend import RedisBackend
from mcp_services.episodic_vault.adapters.redis_backend import redacted as redis_redacted
from mcp_services.episodic_vault.adapters.sqlite_backend import SqliteBackend
from mcp_services.episodic_vault.domain.backend import VaultBackend
from mcp_services.episodic_vault.domain.write_gate import WriteGate
from mcp_services.episodic_vault.settings import VaultConfig


def open_backend(cfg: VaultConfig) -> VaultBackend:
    """Open the configured backend, creating its files, schema or keys as needed.

    Raises BackendUnavailable when a server backend cannot be reached, and SchemaTooNew when the
    store was written by a newer release.
    """
    if cfg.backend == "sqlite":
        return SqliteBackend(cfg.sqlite, resolve_path(cfg.sqlite.path))
    if cfg.backend == "redis":
        return RedisBackend(cfg.redis)
    if cfg.backend == "postgres":
        return PostgresBackend(cfg.postgres)
    snapshot = resolve_path(cfg.memory.snapshot_file) if cfg.memory.snapshot_file else None
    return MemoryBackend(cfg.memory, snapshot)


def store_identity(cfg: VaultConfig) -> str:
    """Names the store the index belongs to, so an index is never reused for another store."""
    if cfg.backend == "sqlite":
        return f"sqlite:{resolve_path(cfg.sqlite.path)}"
    if cfg.backend == "memory":
        return f"memory:{cfg.memory.snapshot_file}"
    if cfg.backend == "redis":
        return f"redis:{redis_redacted(cfg.redis.url)}:{cfg.redis.key_prefix}"
    return f"postgres:{pg_redacted(cfg.postgres.dsn)}:{cfg.postgres.schema_name}"


def index_dir(cfg: VaultConfig, var_dir: str) -> Path | None:
    """Where the vector index persists: vault.index.dir, else beside the data."""
    if cfg.index.dir:
        return resolve_path(cfg.index.dir)
    if cfg.backend == "sqlite":
        p = resolve_path(cfg.sqlite.path)
        return p.with_name(p.name + ".index")
    if cfg.backend == "memory":
        if not cfg.memory.snapshot_file:
            return None  # nothing persists, so neither does the index
        p = resolve_path(cfg.memory.snapshot_file)
        return p.with_name(p.name + ".index")
    tag = hashlib.sha256(store_identity(cfg).encode()).hexdigest()[:12]
    return resolve_path(var_dir) / "data" / f"vault-index-{cfg.backend}-{tag}"


def _local_data_dir(cfg: VaultConfig) -> Path | None:
    """The local directory the store's data lives in: the SQLite file's or the snapshot's."""
    if cfg.backend == "sqlite":
        return resolve_path(cfg.sqlite.path).parent
    if cfg.backend == "memory" and cfg.memory.snapshot_file:
        return resolve_path(cfg.memory.snapshot_file).parent
    return None


def spool_directory(cfg: VaultConfig) -> Path:
    """Where streamed batches wait (domain/spool.py): beside the SQLite file or memory snapshot
    (the disk the vault writes to), else vault.index.dir, else the system's temporary directory
    (TMPDIR)."""
    local = _local_data_dir(cfg)
    if local is not None:
        return local
    if cfg.index.dir:
        return resolve_path(cfg.index.dir)
    return Path(tempfile.gettempdir())


def write_gate(cfg: VaultConfig) -> WriteGate | None:
    """The gate over the local directory the store's data lives in. None for Redis and
    PostgreSQL (their servers hold the data and report their own full disks; a local index that
    cannot be saved is only a warning) and for a memory store without a snapshot."""
    directory = _local_data_dir(cfg)
    if directory is None:
        return None
    # One reserve per vault: a namespace's store (<data dir>/namespaces/<ns>/) shares the
    # default store's, so a thousand namespaces do not hold a thousand reserves.
    home = directory.parent.parent if directory.parent.name == NAMESPACES_DIR else directory
    return WriteGate(directory, cfg.disk_reserve_bytes, home)
