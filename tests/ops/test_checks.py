"""tori-ops validate-config and health-check, as an operator runs them (real processes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mcp_services.common.config import PROJECT_ROOT, load_config
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.ops.validate_config import environments
from tests.conftest import service_environ
from tests.ops.runner import ops


class TestValidateConfig:
    def test_the_shipped_config_is_valid_in_every_environment(self) -> None:
        result = ops(None, "validate-config")
        assert result.returncode == 0, result.stdout + result.stderr
        for env in environments(PROJECT_ROOT / "config"):
            assert f"ok      {env}" in result.stdout

    def test_errors_name_the_key_the_file_and_the_fix(self, tmp_path: Path) -> None:
        config = tmp_path / "config"
        shutil.copytree(PROJECT_ROOT / "config", config)
        with (config / "local.yaml").open("a") as f:
            f.write("\nsleep_scheduler:\n  t0: -1\n")
        with (config / "test.yaml").open("a") as f:
            f.write("\nsparse_pruner:\n  taux: 0.1\n")
        result = ops(None, "validate-config", "--config-dir", str(config))
        assert result.returncode == 1
        out = result.stdout
        assert "INVALID local" in out and "sleep_scheduler.t0" in out
        assert "greater than 0" in out and "fix it in base.yaml / local.yaml" in out
        assert "INVALID test" in out and "sparse_pruner.taux: unknown key" in out
        assert "ok      container" in out
        n = len(environments(config))  # every overlay but the two broken ones is valid
        assert f"{n - 2}/{n} environments valid" in out

    def test_one_environment_and_a_missing_directory(self, tmp_path: Path) -> None:
        assert ops(None, "validate-config", "--env", "container").returncode == 0
        missing = ops(None, "validate-config", "--config-dir", str(tmp_path))
        assert missing.returncode == 2
        assert "base.yaml does not exist" in missing.stderr


class TestHealthCheck:
    def test_reports_each_component_and_fails_when_one_is_down(self, tmp_path: Path) -> None:
        env = service_environ(tmp_path / "var")
        settings = load_config(environ=env, overrides={"vault": {"backend": "sqlite"}})
        with ServerThread("episodic-vault", "episodic_vault", VaultService, settings):
            # Only the vault runs: its probes pass, the other services' fail, exit 1.
            everything = ops(env, "health-check", "--json")
            assert everything.returncode == 1, everything.stderr
            probes = {p["component"]: p for p in json.loads(everything.stdout)}
            assert probes["episodic_vault.grpc"]["ok"] is True
            assert probes["episodic_vault.grpc"]["detail"] == "SERVING"
            assert probes["episodic_vault.metrics"]["ok"] is True
            assert probes["vault.backend"]["ok"] is True
            assert probes["sleep_scheduler.grpc"]["ok"] is False
            assert "UNREACHABLE" in probes["sleep_scheduler.grpc"]["detail"]
            # Scoped to what runs, it passes.
            vault_only = ops(env, "health-check", "--only", "episodic_vault")
            assert vault_only.returncode == 0, vault_only.stdout
            assert "3/3 healthy" in vault_only.stdout

    def test_redis_that_does_not_answer_is_a_failure(self, tmp_path: Path, redis_url: str) -> None:
        env = service_environ(tmp_path / "var", REDIS_URL=redis_url)
        good = ops(env, "health-check", "--only", "redis", "--json")
        assert good.returncode == 0, good.stdout
        (probe,) = json.loads(good.stdout)
        assert probe["ok"] and probe["detail"].startswith("redis ")
        env["REDIS_URL"] = "redis://127.0.0.1:1/0"
        bad = ops(env, "health-check", "--only", "redis", "--timeout", "0.5")
        assert bad.returncode == 1
        assert "FAIL redis" in bad.stdout

    def test_a_file_that_is_not_a_vault_database_fails(self, tmp_path: Path) -> None:
        bogus = tmp_path / "vault.db"
        bogus.write_text("not a database")
        env = service_environ(tmp_path / "var", VAULT_SQLITE_PATH=str(bogus))
        result = ops(env, "health-check", "--only", "backend")
        assert result.returncode == 1
        assert "FAIL vault.backend" in result.stdout and "not a database" in result.stdout
