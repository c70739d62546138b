"""API keys: entries, the key file with tenants and revocation, and `generate-secret-key`."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mcp_services.gateway.keygen import append_key
from mcp_services.gateway.keys import KeyConfigError, load_keys
from mcp_services.gateway.settings import GatewayConfig

ROOT = Path(__file__).resolve().parents[2]
GOOD = "tori_abcdefghijklmnop"


class TestKeyStore:
    def test_keys_from_list_and_file_with_tenants(self, tmp_path: Path) -> None:
        """Keys from the list and the file are accepted; a tenant is kept; comments are skipped."""
        f = tmp_path / "keys"
        f.write_text(f"# team keys\n\n{GOOD}2 acme\n")
        store = load_keys(GatewayConfig(api_keys=[GOOD], api_keys_file=str(f)))
        assert store.lookup(GOOD)[0] is not None
        caller, _ = store.lookup(GOOD + "2")
        assert caller is not None and caller.tenant == "acme"

    def test_unknown_missing_and_revoked_keys_are_refused_with_the_reason(
        self, tmp_path: Path
    ) -> None:
        """A revoked key is refused even while the list still names it; each refusal says why."""
        f = tmp_path / "keys"
        f.write_text(f"revoked {GOOD}\n")
        store = load_keys(GatewayConfig(api_keys=[GOOD], api_keys_file=str(f)))
        assert store.lookup(GOOD) == (None, store.lookup(GOOD)[1])
        assert "revoked" in store.lookup(GOOD)[1]
        assert "not valid" in store.lookup("tori_wrongwrongwrongwrong")[1]
        assert "no API key" in store.lookup(None)[1]

    @pytest.mark.parametrize(
        ("line", "needle"),
        [
            ("short", "16-256 characters"),
            (f"{GOOD} acme extra", "expected 'KEY' or 'KEY TENANT'"),
            (f"{GOOD} bad/tenant", "tenant 'bad/tenant'"),
            ("revoked", "exactly one key"),
        ],
    )
    def test_a_bad_line_is_named_with_its_file_and_line(
        self, tmp_path: Path, line: str, needle: str
    ) -> None:
        """A malformed entry fails loading with the file:line and what a valid entry looks like."""
        f = tmp_path / "keys"
        f.write_text(f"{GOOD}\n{line}\n")
        with pytest.raises(KeyConfigError) as err:
            load_keys(GatewayConfig(api_keys_file=str(f)))
        assert f"{f}:2" in str(err.value) and needle in str(err.value)

    def test_a_missing_key_file_is_an_error_that_says_how_to_make_one(self, tmp_path: Path) -> None:
        """gateway.api_keys_file naming no file fails with the fix (make generate-secret-key)."""
        with pytest.raises(KeyConfigError, match="generate-secret-key"):
            load_keys(GatewayConfig(api_keys_file=str(tmp_path / "nope")))


class TestGenerateSecretKey:
    def test_keygen_appends_a_working_key_readable_only_by_its_owner(self, tmp_path: Path) -> None:
        """A generated key lands in a 0600 file and is accepted by the key store built from it."""
        f = tmp_path / "secrets" / "gateway_api_keys"
        k1 = append_key(f)
        k2 = append_key(f, tenant="acme")
        assert k1 != k2 and len(k1) >= 40
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        store = load_keys(GatewayConfig(api_keys_file=str(f)))
        assert store.lookup(k1)[0] is not None
        tenant_caller = store.lookup(k2)[0]
        assert tenant_caller is not None and tenant_caller.tenant == "acme"

    def test_make_generate_secret_key_writes_a_private_file(self, tmp_path: Path) -> None:
        """The make target prints one key and leaves it in a file only the owner can read."""
        f = tmp_path / "keys"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
        env["GATEWAY_API_KEYS_FILE"] = str(f)
        out = subprocess.run(
            ["make", "-s", "generate-secret-key"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        key = out.stdout.strip().splitlines()[-1]
        assert f.read_text().split() == [key]
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
