"""Fixtures of the deployment tests: the vault fixture of the vault's own tests is reused."""

from tests.episodic_vault.conftest import start_vault

__all__ = ["start_vault"]
