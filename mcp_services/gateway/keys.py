"""API keys for the gateway: who may call, and as which caller.

An entry is "KEY" or "KEY TENANT" (whitespace between). Entries come from gateway.api_keys (the
environment gives them comma-separated) and from gateway.api_keys_file, one a line, where blank
lines and # comments are skipped and "revoked KEY" refuses a key wherever else it is listed.

Keys are held only as SHA-256 digests: a caller is found by the digest of the key it presents,
so the lookup takes the same time whichever key (if any) matches, and no key text stays in memory
longer than the request that carried it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mcp_services.common.namespaces import DEFAULT, NAMESPACE_RE
from mcp_services.gateway.settings import GatewayConfig

# What `generate-secret-key` makes (secrets.token_urlsafe) and what a person can paste safely.
KEY_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
# A tenant is a namespace (common/namespaces.py): one pattern for both.
TENANT_RE = NAMESPACE_RE
MIN_KEY_LEN = 16


class KeyConfigError(Exception):
    """A key entry or the key file is unusable; the message names where and how to fix it."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: the routing identity is the tenant when the key names one, else the key."""

    key_digest: str
    tenant: str

    @property
    def identity(self) -> str:
        return f"tenant:{self.tenant}" if self.tenant else f"key:{self.key_digest}"

    @property
    def namespace(self) -> str:
        """The namespace every service call of this caller is for: the key's tenant, else the
        default one (keys without a tenant, and the anonymous caller when keys are off)."""
        return self.tenant if self.tenant and self.key_digest else DEFAULT


ANONYMOUS = Caller(key_digest="", tenant="anonymous")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyStore:
    """The accepted keys (by digest, with their tenant) and the revoked ones."""

    callers: dict[str, Caller]
    revoked: frozenset[str]

    @property
    def empty(self) -> bool:
        return not self.callers

    def lookup(self, key: str | None) -> tuple[Caller | None, str]:
        """The caller for `key`, or None with the reason a person can act on."""
        if not key:
            return None, "no API key was sent; send the header 'Authorization: Bearer <key>'"
        d = digest(key)
        if d in self.revoked:
            return None, "this API key has been revoked; ask the operator for a new one"
        caller = self.callers.get(d)
        if caller is None:
            return None, "the API key is not valid; check it, or ask the operator for a key"
        return caller, ""


def parse_entry(entry: str, where: str) -> tuple[str, str]:
    """(key, tenant) from "KEY" or "KEY TENANT"."""
    parts = entry.split()
    if not parts or len(parts) > 2:
        raise KeyConfigError(f"{where}: expected 'KEY' or 'KEY TENANT', got {len(parts)} words")
    key, tenant = parts[0], parts[1] if len(parts) == 2 else ""
    if not KEY_RE.fullmatch(key):
        raise KeyConfigError(
            f"{where}: a key must be {MIN_KEY_LEN}-256 characters from A-Z a-z 0-9 . _ ~ + / = -; "
            "make one with `make generate-secret-key`"
        )
    if tenant and not TENANT_RE.fullmatch(tenant):
        raise KeyConfigError(
            f"{where}: tenant {tenant[:40]!r} must be 1-64 characters from A-Z a-z 0-9 . _ : -"
        )
    return key, tenant


def _file_lines(path: Path) -> Iterable[tuple[int, str]]:
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield n, line


def load_keys(cfg: GatewayConfig, *, missing_file_ok: bool = False) -> KeyStore:
    """Every key from the config list and the key file. Raises KeyConfigError naming the entry."""
    callers: dict[str, Caller] = {}
    revoked: set[str] = set()

    def add(entry: str, where: str) -> None:
        key, tenant = parse_entry(entry, where)
        callers[digest(key)] = Caller(key_digest=digest(key)[:16], tenant=tenant)

    for i, entry in enumerate(cfg.api_keys):
        add(entry, f"gateway.api_keys[{i}]")
    if cfg.api_keys_file:
        path = Path(cfg.api_keys_file)
        try:
            lines = list(_file_lines(path))
        except FileNotFoundError:
            if not missing_file_ok:
                raise KeyConfigError(
                    f"gateway.api_keys_file: {path} does not exist; create it with "
                    "`make generate-secret-key` or fix GATEWAY_API_KEYS_FILE"
                ) from None
            lines = []
        except OSError as exc:
            raise KeyConfigError(
                f"gateway.api_keys_file: cannot read {path} ({exc.strerror}); fix its path or "
                "permissions"
            ) from exc
        for n, line in lines:
            where = f"{path}:{n}"
            if line.split(maxsplit=1)[0] == "revoked":
                rest = line.split()[1:]
                if len(rest) != 1:
                    raise KeyConfigError(f"{where}: write 'revoked KEY' with exactly one key")
                revoked.add(digest(rest[0]))
            else:
                add(line, where)
    for d in revoked:
        callers.pop(d, None)
    return KeyStore(callers=callers, revoked=frozenset(revoked))
