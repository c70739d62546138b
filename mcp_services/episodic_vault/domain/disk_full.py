"""A full disk, told apart from other storage errors.

A write that fails for lack of space is the operator's to fix, not a bug: it becomes DiskFull (a
CapacityExceeded, so RESOURCE_EXHAUSTED) naming the path and the space left on its device.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

from mcp_services.episodic_vault.domain.backend import CapacityExceeded

# SQLite's primary result code for "database or disk is full".
_SQLITE_FULL = 13
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int | None:
    """Bytes free to this process on the device holding `path` (or its nearest existing
    parent); None when it cannot be told."""
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def space_note(path: Path) -> str:
    free = free_bytes(path)
    left = "unknown" if free is None else f"{free} bytes ({free / (1 << 20):.1f} MiB)"
    return f"{path} has {left} free on its device"


class DiskFull(CapacityExceeded):
    """A write failed because the device holding `path` is full (or over quota)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        super().__init__(
            f"{what} failed: no space left on the device ({space_note(path)}); free space "
            "(PurgeTTL, DeleteEpisode, or remove other files on that device) or move the vault's "
            "data to a larger disk, then retry"
        )


def is_disk_full(exc: BaseException) -> bool:
    """True for the ways 'no space left' reaches us: OSError ENOSPC/EDQUOT, SQLite's
    SQLITE_FULL, and faiss's RuntimeError quoting the OS message."""
    if isinstance(exc, OSError):
        return exc.errno in _NO_SPACE
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL
    return isinstance(exc, RuntimeError) and os.strerror(errno.ENOSPC) in str(exc)
