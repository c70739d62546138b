"""The vault's read-only mode on a full disk.

A vault that starts on a full disk opens read-only instead of refusing to start, so what is stored
can still be read, deleted and purged to make room. Every write attempt while read-only re-checks
the disk (a probe file written and fsynced), so writes resume in the running process once there
is space again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import structlog

from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import VaultConfig
from mcp_services.episodic_vault.backends.disk_full import DiskFull, space_note

log = structlog.get_logger(__name__)

# What a probe writes: a disk with room for it has room for a small put.
PROBE_BYTES = 64 * 1024


def data_directory(cfg: VaultConfig, index_path: Path | None) -> Path | None:
    """The local directory the vault writes: the SQLite file's or snapshot's, else the index's
    (Redis and PostgreSQL keep their data on their servers). None: nothing local to write."""
    if cfg.backend == "sqlite":
        return resolve_path(cfg.sqlite.path).parent
    if cfg.backend == "memory" and cfg.memory.snapshot_file:
        return resolve_path(cfg.memory.snapshot_file).parent
    return index_path.parent if index_path is not None else None


def probe_write(directory: Path) -> OSError | None:
    """Write, fsync and remove a PROBE_BYTES file in `directory`; the error when that fails."""
    path = directory / ".vault-write-probe"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(bytes(PROBE_BYTES))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    finally:
        path.unlink(missing_ok=True)
    return None


class WriteGate:
    """Whether the vault may write. Read-only after a failed probe at start; each write attempt
    while read-only probes again (at most one probe at a time) and reopens writes on success."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.reason = ""
        self._lock = threading.Lock()

    @property
    def read_only(self) -> bool:
        return bool(self.reason)

    def check_at_start(self) -> None:
        exc = probe_write(self.directory)
        if exc is not None:
            self.reason = f"cannot write to {self.directory} ({exc.strerror})"
            log.warning(
                "vault_read_only",
                reason=self.reason,
                free=space_note(self.directory),
                allowed="reads, DeleteEpisode, PurgeTTL",
            )

    def ensure_writable(self, what: str) -> None:
        """Raises DiskFull (RESOURCE_EXHAUSTED) while the disk still refuses a probe write."""
        if not self.reason:
            return
        with self._lock:
            if not self.reason:
                return
            exc = probe_write(self.directory)
            if exc is not None:
                raise DiskFull(
                    self.directory,
                    f"{what}: the vault is read-only since it started ({self.reason}); reads, "
                    "DeleteEpisode and PurgeTTL work, and writes resume once a write succeeds;",
                )
            log.warning("vault_writable_again", directory=str(self.directory))
            self.reason = ""
