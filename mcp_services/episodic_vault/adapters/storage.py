"""Vault storage backends, chosen by vault.backend."""

from __future__ import annotations

from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import VaultConfig
from mcp_services.episodic_vault.backends.base import (
    BackendError,
    BackendUnavailable,
    CapacityExceeded,
    IdConflict,
    SchemaTooNew,
    VaultBackend,
)
from mcp_services.episodic_vault.backends.memory_backend import MemoryBackend
from mcp_services.episodic_vault.backends.postgres_backend import PostgresBackend
from mcp_services.episodic_vault.backends.redis_backend import RedisBackend
from mcp_services.episodic_vault.backends.sqlite_backend import SqliteBackend

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "CapacityExceeded",
    "IdConflict",
    "MemoryBackend",
    "PostgresBackend",
    "RedisBackend",
    "SchemaTooNew",
    "SqliteBackend",
    "VaultBackend",
    "open_backend",
]


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
