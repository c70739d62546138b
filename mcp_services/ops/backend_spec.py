"""Naming a vault backend on the command line: ``KIND[:key=value,key=value...]``.

The keys are those of the backend's section of the config (``vault.<kind>.<key>``), laid over the
configuration in force, so ``sqlite:path=/tmp/a.db`` or
``postgres:dsn=postgresql://postgres@127.0.0.1/test,schema_name=tori_copy`` picks a store without
editing a file. An empty spec is the configured backend. Values are validated by the same schema
as the services' config, so a bad key or value is refused with its name and the fix.
"""

from __future__ import annotations

from typing import Any

from mcp_services.common.config import ConfigError, load_config
from mcp_services.common.secrets_mask import mask_text
from mcp_services.episodic_vault.settings import VaultConfig

KINDS = ("sqlite", "memory", "redis", "postgres")


class SpecError(ValueError):
    """The backend spec is malformed; the message says how to write it."""


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise SpecError(
            f"backend {spec!r}: the kind must be one of {', '.join(KINDS)} "
            "(e.g. sqlite:path=/tmp/vault.db)"
        )
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SpecError(f"backend {spec!r}: {item!r} is not key=value")
        options[key.strip()] = value.strip()
    return kind, options


def vault_config(spec: str | None) -> VaultConfig:
    """The VaultConfig for a spec over the configuration in force (the configured one if None)."""
    if not spec:
        return load_config().vault
    kind, options = parse_spec(spec)
    overrides: dict[str, Any] = {"vault": {"backend": kind, kind: options}}
    try:
        return load_config(overrides=overrides).vault
    except ConfigError as exc:
        raise SpecError(f"backend {spec!r}: {exc}") from None


def describe(cfg: VaultConfig) -> str:
    """A one-line description of where a backend keeps its data (no passwords)."""
    if cfg.backend == "sqlite":
        return f"sqlite {cfg.sqlite.path}"
    if cfg.backend == "postgres":
        dsn = mask_text(cfg.postgres.dsn)
        return f"postgres {dsn} schema {cfg.postgres.schema_name}"
    if cfg.backend == "redis":
        return f"redis {mask_text(cfg.redis.url)} prefix {cfg.redis.key_prefix}"
    return f"memory snapshot={cfg.memory.snapshot_file or '-'}"
