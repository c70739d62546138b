"""A streamed batch held on disk while it arrives, so a PutEpisodes stream costs the vault a chunk
of memory, not the batch.

PutEpisodes is all-or-nothing (proto: "written atomically: one bad or conflicting episode fails the
call and stores nothing"), so nothing can reach the store before the client half-closes its stream;
until then each validated episode is appended here. The file is anonymous (O_TMPFILE where the OS
has it, else unlinked at once) in the vault's data directory: it is gone when closed or when the
process dies, and it takes space on the disk the vault writes to, so a full disk refuses the
stream (DiskFull) instead of filling memory. Episodes are pickled: the file is written and read by
this process only. Where the file lives is adapters/storage.py's spool_directory.
"""

from __future__ import annotations

import os
import pickle
import struct
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

from mcp_services.episodic_vault.domain.disk_full import DiskFull, is_disk_full
from mcp_services.episodic_vault.domain.model import Episode

# Episodes per chunk when the spool is read back (well under a MB with typical payloads; at most
# CHUNK x (1 MiB payload + metadata) with the largest).
CHUNK = 16
_LEN = struct.Struct("<Q")


class EpisodeSpool(Sequence[Episode]):
    """Append-only until read; thread-safe reads (positional, no shared file offset)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # SIM115 is ignored below: the file lives as long as the spool; close() closes it.
            self._file = tempfile.TemporaryFile(dir=directory, prefix="vault-spool-")  # noqa: SIM115
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(directory, "holding the streamed batch on disk") from exc
            raise
        self._fd = self._file.fileno()
        self._offsets: list[int] = []
        self._end = 0

    def append(self, ep: Episode) -> None:
        """Raises DiskFull when the data directory's device is full."""
        data = pickle.dumps(ep, protocol=pickle.HIGHEST_PROTOCOL)
        record = memoryview(_LEN.pack(len(data)) + data)
        at = self._end
        try:
            while record:
                n = os.pwrite(self._fd, record, at)
                record, at = record[n:], at + n
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(self.directory, "holding the streamed batch on disk") from exc
            raise
        self._offsets.append(self._end)
        self._end = at

    def _read(self, offset: int) -> Episode:
        (n,) = _LEN.unpack(os.pread(self._fd, _LEN.size, offset))
        data = os.pread(self._fd, n, offset + _LEN.size)
        if len(data) != n:
            raise OSError(f"the spool in {self.directory} is truncated at offset {offset}")
        ep: Episode = pickle.loads(data)
        return ep

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, i: int) -> Episode: ...

    @overload
    def __getitem__(self, i: slice) -> list[Episode]: ...

    def __getitem__(self, i: int | slice) -> Episode | list[Episode]:
        if isinstance(i, slice):
            return [self._read(o) for o in self._offsets[i]]
        return self._read(self._offsets[i])

    def __iter__(self) -> Iterator[Episode]:
        for offset in self._offsets:
            yield self._read(offset)

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, list[Episode]]]:
        """(index of the first, episodes) a chunk at a time."""
        for start in range(0, len(self), size):
            yield start, self[start : start + size]

    @property
    def nbytes(self) -> int:
        return self._end

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EpisodeSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
