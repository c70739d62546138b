"""The real Redis and PostgreSQL fixtures of the vault's contract suite, for the ops tools."""

from tests.episodic_vault.test_backend_contract import pg_schema, redis_prefix

__all__ = ["pg_schema", "redis_prefix"]
