"""vault-cli against a real vault."""

from __future__ import annotations

import json

import pytest

from mcp_services.episodic_vault import cli
from tests.conftest import free_port
from tests.episodic_vault.conftest import VaultFactory


class TestVaultCli:
    def test_put_get_loop_reports_all_ok(
        self, start_vault: VaultFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """put-get-loop N writes N episodes, reads each back identical, and exits 0."""
        v = start_vault()
        assert cli.main(["--target", v.target, "put-get-loop", "25", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert (summary["ok"], summary["failed"], summary["mismatched"]) == (25, 0, 0)
        assert summary["put_p50_ms"] > 0 and summary["put_p99_ms"] >= summary["put_p50_ms"]
        assert v.count() == 25

    def test_put_get_loop_fails_loudly_when_the_vault_is_unreachable(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With no vault to talk to, the loop counts every episode as failed and exits 1."""
        code = cli.main(
            ["--timeout", "0.5", "--target", f"127.0.0.1:{free_port()}", "put-get-loop", "3"]
        )
        out = capsys.readouterr()
        assert code == 1
        assert "0/3 ok, 3 failed" in out.out and "UNAVAILABLE" in out.err

    def test_put_get_list_stats(
        self, start_vault: VaultFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """put stores concepts given as id=strength, get and list show it, stats count it."""
        v = start_vault()
        args = ["--target", v.target]
        assert (
            cli.main(
                [
                    *args,
                    "put",
                    "--id",
                    "cli-1",
                    "--concepts",
                    "concept:dog=0.5,concept:cat",
                    "--tags",
                    "pets",
                ]
            )
            == 0
        )
        capsys.readouterr()
        assert cli.main([*args, "get", "cli-1"]) == 0
        got = json.loads(capsys.readouterr().out)["episode"]
        assert got["activation"] == {
            "concept_ids": ["concept:dog", "concept:cat"],
            "strengths": [0.5, 1.0],
        }
        assert cli.main([*args, "list", "--tag", "pets"]) == 0
        assert json.loads(capsys.readouterr().out)["episodes"][0]["id"] == "cli-1"
        assert cli.main([*args, "stats"]) == 0
        assert json.loads(capsys.readouterr().out)["episode_count"] == "1"

    def test_bad_strength_is_reported_by_the_vault(
        self, start_vault: VaultFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A strength out of range comes back as the vault's INVALID_ARGUMENT message, exit 1."""
        v = start_vault()
        assert cli.main(["--target", v.target, "put", "--concepts", "a=2"]) == 1
        assert "INVALID_ARGUMENT: episode.activation.strengths[0]" in capsys.readouterr().err
