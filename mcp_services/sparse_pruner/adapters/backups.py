"""Backups of the graph versions the pruner replaced, on local disk, with retention.

Before every pruning commit the version it replaces is saved whole (concepts, biases, edges,
prototypes, header) as ``<backup_id>.npz`` with its description in ``<backup_id>.json``;
RollbackPruning commits it back as a new version. Each file is written to a temporary name,
fsynced and renamed into place, the data before the description, so a crash leaves either a whole
backup or one without a description, which is never listed. A backup whose commit then fails
(a version conflict) is discarded. Only the newest ``retention`` backups are kept.

Errors: :class:`BackupNotFound` (unknown or dropped id), :class:`BackupCorrupt` (a file that does
not load); ``OSError`` from the disk passes through.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from ulid import ULID

from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot

_ID_RE = re.compile(r"^[0-9A-Z]{26}$")


class BackupNotFound(KeyError):
    """No backup with that id (never made, or dropped by retention)."""


class BackupCorrupt(ValueError):
    """A backup file exists but does not load."""


@dataclass(frozen=True)
class BackupInfo:
    """What a backup holds, without loading it."""

    backup_id: str
    graph_version: int
    pruned_version: int
    job_id: str
    created_at_ms: int
    concept_count: int
    edge_count: int


class BackupStore:
    """Backups under ``root``; the newest ``retention`` are kept. Thread-safe."""

    def __init__(self, root: Path, retention: int) -> None:
        if retention < 1:
            raise ValueError(f"retention: must be >= 1, got {retention}")
        self.root = root
        self.retention = retention
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def save(self, graph: GraphSnapshot, pruned_version: int, job_id: str) -> BackupInfo:
        """Write ``graph`` as a new backup (the version ``pruned_version`` replaced)."""
        backup_id = str(ULID())
        info = BackupInfo(
            backup_id=backup_id,
            graph_version=graph.version,
            pruned_version=pruned_version,
            job_id=job_id,
            created_at_ms=int(time.time() * 1000),
            concept_count=graph.n_concepts,
            edge_count=graph.edge_count,
        )
        w = graph.weights
        lengths = np.asarray([len(p) for p in graph.prototypes], dtype=np.int64)
        flat = (
            np.concatenate(graph.prototypes).astype(np.int64)
            if graph.prototypes
            else np.zeros(0, dtype=np.int64)
        )
        header = {
            "created_at_ms": graph.created_at_ms,
            "author": graph.author,
            "reason": graph.reason,
            "metadata": graph.metadata,
        }
        final = self.root / f"{backup_id}.npz"
        tmp = self.root / f".{backup_id}.npz.tmp"
        with self._lock:
            with tmp.open("wb") as fh:
                np.savez(
                    fh,
                    header=np.asarray(json.dumps(header)),
                    concept_ids=np.asarray(graph.concept_ids, dtype=np.str_),
                    biases=graph.biases,
                    w_data=w.data,
                    w_indices=w.indices,
                    w_indptr=w.indptr,
                    proto_lengths=lengths,
                    proto_flat=flat,
                    support=np.asarray(graph.support, dtype=np.int64),
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            self._write_info(info)
            self._apply_retention()
        return info

    def mark_committed(self, backup_id: str, pruned_version: int) -> BackupInfo:
        """Record the version the pruning committed on top of the backed-up one."""
        with self._lock:
            info = replace(self._info(backup_id), pruned_version=pruned_version)
            self._write_info(info)
        return info

    def discard(self, backup_id: str) -> None:
        """Remove a backup whose commit did not happen."""
        with self._lock:
            (self.root / f"{backup_id}.json").unlink(missing_ok=True)
            (self.root / f"{backup_id}.npz").unlink(missing_ok=True)

    def list(self) -> list[BackupInfo]:
        """Every retained backup, newest first."""
        infos = []
        for path in sorted(self.root.glob("*.json"), reverse=True):
            try:
                infos.append(self._info(path.stem))
            except (BackupCorrupt, BackupNotFound):
                continue
        return infos

    def load(self, backup_id: str) -> tuple[BackupInfo, GraphSnapshot]:
        """The backup's info and the graph exactly as it was saved."""
        info = self._info(backup_id)
        path = self._path(backup_id)
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                ids = tuple(str(c) for c in z["concept_ids"].tolist())
                n = len(ids)
                weights = sp.csr_matrix((z["w_data"], z["w_indices"], z["w_indptr"]), shape=(n, n))
                lengths = z["proto_lengths"]
                flat = z["proto_flat"]
                support = tuple(int(s) for s in z["support"])
                biases = np.asarray(z["biases"], dtype=np.float64)
        except FileNotFoundError:
            raise BackupNotFound(backup_id) from None
        except (ValueError, KeyError, OSError) as exc:
            raise BackupCorrupt(f"backup {backup_id} does not load: {exc}") from None
        bounds = np.cumsum(lengths)[:-1] if lengths.size else np.zeros(0, dtype=np.int64)
        protos = tuple(np.split(flat, bounds)) if lengths.size else ()
        graph = GraphSnapshot(
            version=info.graph_version,
            concept_ids=ids,
            weights=weights,
            biases=biases,
            prototypes=protos,
            support=support,
            created_at_ms=int(header["created_at_ms"]),
            author=str(header["author"]),
            reason=str(header["reason"]),
            metadata=dict(header["metadata"]),
        )
        return info, graph

    def latest_id(self) -> str:
        """Id of the newest backup; :class:`BackupNotFound` when there is none."""
        infos = self.list()
        if not infos:
            raise BackupNotFound("no backups yet")
        return infos[0].backup_id

    def _path(self, backup_id: str) -> Path:
        if not _ID_RE.match(backup_id):
            raise BackupNotFound(backup_id)
        return self.root / f"{backup_id}.npz"

    def _info(self, backup_id: str) -> BackupInfo:
        path = self._path(backup_id).with_suffix(".json")
        try:
            return BackupInfo(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise BackupNotFound(backup_id) from None
        except (ValueError, OSError, TypeError) as exc:
            raise BackupCorrupt(f"{path.name}: {exc}") from None

    def _write_info(self, info: BackupInfo) -> None:
        final = self.root / f"{info.backup_id}.json"
        tmp = self.root / f".{info.backup_id}.json.tmp"
        with tmp.open("w") as fh:
            json.dump(info.__dict__, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.root)

    def _apply_retention(self) -> None:
        # ULIDs sort by creation time, so the names order the backups; the description goes
        # first so a half-removed backup is never listed.
        for old in sorted(self.root.glob("*.npz"), reverse=True)[self.retention :]:
            old.with_suffix(".json").unlink(missing_ok=True)
            old.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
