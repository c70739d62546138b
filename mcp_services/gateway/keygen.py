"""`make generate-secret-key`: a new API key, appended to a key file only its owner can read.

The file is created with mode 0600 (and an existing one is narrowed to 0600 before the key is
added), so the key never sits in a file others can read. The running gateway picks the new key
up at its next reload, without a restart.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from mcp_services.gateway.keys import TENANT_RE

KEY_PREFIX = "tori_"
KEY_BYTES = 32  # 256 bits of entropy


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def append_key(path: Path, tenant: str = "") -> str:
    """Append a fresh key (with its tenant, if any) to `path`; returns the key."""
    if tenant and not TENANT_RE.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r} must be 1-64 characters from A-Z a-z 0-9 . _ : -")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        os.write(fd, (f"{key} {tenant}" if tenant else key).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def revoke_key(path: Path, key: str) -> None:
    """Mark `key` revoked in `path` (the gateway refuses it from its next reload on)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        os.write(fd, f"revoked {key}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
