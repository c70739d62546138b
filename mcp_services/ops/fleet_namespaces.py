"""Which namespaces a fleet holds data for, as the operator's tools (backup, export,
verify-consistency) find them from outside the running services.

A namespace other than ``default`` leaves a trace where each service keeps its data:

- **files**: a directory ``namespaces/<ns>/`` under the graph directory, the pruner's backup
  directory and the learner's data directory, and (SQLite, memory with a snapshot) under the
  vault's data directory (episodic_vault.namespaces.stored_namespaces);
- **Redis vault**: keys under ``<vault.redis.key_prefix>ns/<ns>/`` (its ``meta`` hash names it);
- **PostgreSQL vault**: a schema ``<schema>_ns_<hash>``, whose name cannot be turned back into
  the namespace's. Such a schema is matched against the names found elsewhere (and those the
  operator gives); one that matches none is reported (:class:`UnknownNamespaces`) so no tenant's
  episodes are left out unseen.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import Settings
from mcp_services.common.namespaces import DEFAULT, NAMESPACE_RE, NAMESPACES_DIR
from mcp_services.episodic_vault.namespaces import postgres_schema, stored_namespaces
from mcp_services.episodic_vault.settings import VaultConfig


class UnknownNamespaces(Exception):
    """Data of a namespace whose name cannot be found; the message names it and the fix."""


def service_dirs(settings: Settings) -> dict[str, Path]:
    """Where the graph, pruner and learner services keep the default namespace's files."""
    from mcp_services.koopman_learner.server import data_dir as koopman_dir
    from mcp_services.sleep_scheduler.server import graph_dir
    from mcp_services.sparse_pruner.server import backup_root

    return {
        "graphs": resolve_path(graph_dir(settings)),
        "pruner": resolve_path(backup_root(settings)),
        "koopman": resolve_path(koopman_dir(settings)),
    }


def _named_dirs(root: Path) -> set[str]:
    where = root / NAMESPACES_DIR
    if not where.is_dir():
        return set()
    return {
        d.name
        for d in where.iterdir()
        if d.is_dir() and not d.is_symlink() and NAMESPACE_RE.fullmatch(d.name)
    } - {DEFAULT}


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def redis_namespaces(cfg: VaultConfig) -> set[str]:
    """The namespaces with keys under the Redis vault's prefix (each keeps a ``meta`` hash)."""
    prefix = f"{cfg.redis.key_prefix}ns/"
    client = redis.Redis.from_url(
        cfg.redis.url,
        password=cfg.redis.password or None,
        socket_connect_timeout=cfg.redis.connect_timeout_s,
        socket_timeout=cfg.redis.socket_timeout_s,
    )
    try:
        found = set()
        for key in client.scan_iter(match=f"{_glob_escape(prefix)}*/meta", count=1000):
            name = key.decode(errors="replace")[len(prefix) : -len("/meta")]
            if NAMESPACE_RE.fullmatch(name) and name != DEFAULT:
                found.add(name)
        return found
    finally:
        client.close()


def postgres_schemas(cfg: VaultConfig) -> set[str]:
    """The schemas beside the PostgreSQL vault's that hold a namespace's episodes."""
    base = cfg.postgres.schema_name[:42]
    with psycopg.connect(
        cfg.postgres.dsn, connect_timeout=max(2, round(cfg.postgres.connect_timeout_s))
    ) as conn:
        rows = conn.execute(
            sql.SQL("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, {})").format(
                sql.Literal(f"{base}_ns_")
            )
        ).fetchall()
    return {str(r[0]) for r in rows}


def vault_namespaces(cfg: VaultConfig) -> set[str]:
    """The namespaces other than the default a vault store lists (none for PostgreSQL, whose
    schemas do not carry their namespace's name)."""
    if cfg.backend in ("sqlite", "memory"):
        return set(stored_namespaces(cfg))
    if cfg.backend == "redis":
        return redis_namespaces(cfg)
    return set()


def fleet_namespaces(settings: Settings, given: Iterable[str] = ()) -> list[str]:
    """Every namespace the fleet holds data for, ``default`` first, then sorted; ``given`` adds
    names (a PostgreSQL vault's schemas do not carry theirs). UnknownNamespaces when a
    PostgreSQL schema belongs to none of them."""
    found = set(given) - {DEFAULT}
    for root in service_dirs(settings).values():
        found |= _named_dirs(root)
    vault = settings.vault
    found |= vault_namespaces(vault)
    if vault.backend == "postgres":
        known = {postgres_schema(vault.postgres.schema_name, ns) for ns in found}
        if unknown := sorted(postgres_schemas(vault) - known):
            raise UnknownNamespaces(
                f"PostgreSQL schema(s) {', '.join(unknown[:5])} hold a namespace's episodes but "
                "no other service's data names that namespace; name it with --namespace NS "
                "(repeat for each), so its episodes are not left out"
            )
    return [DEFAULT, *sorted(found)]
