"""The vault's read-only mode on a full disk, and the reserve that lets it still delete.

A vault that finds its disk full (a probe write fails at start, or a write fails with DiskFull)
turns read-only instead of failing: reads go on, and DeleteEpisode and PurgeTTL go on too, so room
can be made. A SQLite delete appends to the WAL, which needs space on a disk that has none, so the
vault keeps a reserve: a file of vault.disk_reserve_bytes in its data directory, made while there
is space and given up by the first delete or purge while read-only. Every write attempt while
read-only probes the disk again (a file written and fsynced) and writes resume in the running
process once the probe and a new reserve fit.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import structlog

from mcp_services.episodic_vault.domain.disk_full import DiskFull, space_note

log = structlog.get_logger(__name__)

# What a probe writes: a disk with room for it has room for a small put.
PROBE_BYTES = 64 * 1024
RESERVE_NAME = ".vault-disk-reserve"


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


def _make_reserve(path: Path, size: int) -> OSError | None:
    """Make `path` a file of `size` bytes of allocated disk (kept when it is already)."""
    try:
        if path.exists() and path.stat().st_size >= size:
            return None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        path.unlink(missing_ok=True)
        return exc
    return None


class WriteGate:
    """Whether the store may write, and its disk reserve. Thread-safe."""

    def __init__(self, directory: Path, reserve_bytes: int, reserve_dir: Path) -> None:
        """Gate writes to `directory`; the reserve file lives in `reserve_dir` (one per vault:
        adapters/storage.py gives a namespace's store the default store's directory)."""
        self.directory = directory
        self.reserve_bytes = reserve_bytes
        self.reserve = reserve_dir / RESERVE_NAME
        self.reason = ""
        self._lock = threading.Lock()

    @property
    def read_only(self) -> bool:
        return bool(self.reason)

    def _room(self) -> OSError | None:
        """None when a probe and the reserve fit; else the error."""
        exc = probe_write(self.directory)
        if exc is None and self.reserve_bytes:
            exc = _make_reserve(self.reserve, self.reserve_bytes)
        return exc

    def _go_read_only(self, reason: str) -> None:
        if not self.reason:
            log.warning(
                "vault_read_only",
                reason=reason,
                free=space_note(self.directory),
                allowed="reads, DeleteEpisode, PurgeTTL",
                writes="refused with RESOURCE_EXHAUSTED until a write attempt finds space",
            )
        self.reason = reason

    def check_at_start(self) -> None:
        with self._lock:
            exc = self._room()
            if exc is not None:
                self._go_read_only(f"cannot write to {self.directory} ({exc.strerror})")

    def disk_full(self, exc: DiskFull) -> None:
        """A write failed for lack of space: refuse writes until there is some."""
        with self._lock:
            self._go_read_only(f"a write failed: no space left on the device of {exc.path}")

    def make_room(self) -> None:
        """Before a delete or purge: while read-only, give up the reserve so it has space."""
        with self._lock:
            if self.reason and self.reserve.exists():
                self.reserve.unlink(missing_ok=True)
                log.warning(
                    "vault_disk_reserve_released",
                    path=str(self.reserve),
                    bytes=self.reserve_bytes,
                    free=space_note(self.directory),
                )

    def ensure_writable(self, what: str) -> None:
        """Raises DiskFull (RESOURCE_EXHAUSTED) while read-only and the disk still has no room
        for a probe and the reserve."""
        if not self.reason:
            return
        with self._lock:
            if not self.reason:
                return
            if self._room() is not None:
                raise DiskFull(
                    self.directory,
                    f"{what}: the vault is read-only ({self.reason}); reads, DeleteEpisode and "
                    "PurgeTTL work, and writes resume once a write attempt finds space;",
                )
            log.warning("vault_writable_again", directory=str(self.directory))
            self.reason = ""
