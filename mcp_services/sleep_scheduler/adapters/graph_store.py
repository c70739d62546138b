"""The versioned concept-graph store: the scheduler's durable data.

Layout, one directory per deployment (``sleep_scheduler.graph_dir``)::

    v000000000001.npz   version 1: header, concept index, biases, upper-triangle edges, prototypes
    v000000000002.npz   ...
    .lock               flock()ed around every commit (replicas may share the directory)

A version is written to a temporary file in the same directory, fsync()ed, renamed into place
(atomic on POSIX) and the directory fsync()ed, so a crash leaves either the old set of versions or
the new one, never a torn file. Only the last ``keep`` versions are retained. Version 0 is the
empty graph and is never stored. The weights are stored as their upper triangle in COO form; the
full matrix is only ever built as scipy CSR, never dense.

Errors (one hierarchy, mapped to status codes by the servicer)::

    GraphStoreError
    ├── VersionNotFound   no such version (never made, or dropped)   NOT_FOUND
    ├── VersionConflict   commit against a base that is not latest   FAILED_PRECONDITION
    └── InvalidGraph      malformed graph (message names the field)  INVALID_ARGUMENT
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex

_NAME = re.compile(r"^v(\d{12})\.npz$")


class GraphStoreError(Exception):
    """Base of the store's errors."""


class VersionNotFound(GraphStoreError):
    """The requested version does not exist or was dropped by retention."""


class VersionConflict(GraphStoreError):
    """A commit's base version is not the latest: re-read, recompute, commit again."""


class InvalidGraph(GraphStoreError):
    """A committed graph is malformed; the message names the field and the fix."""


@dataclass(frozen=True)
class GraphMeta:
    """What describes a version besides its arrays (the proto's GraphHeader)."""

    version: int
    base_version: int
    concept_count: int
    edge_count: int
    created_at_ms: int
    author: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        d = {
            "version": self.version,
            "base_version": self.base_version,
            "concept_count": self.concept_count,
            "edge_count": self.edge_count,
            "created_at_ms": self.created_at_ms,
            "author": self.author,
            "reason": self.reason,
            "metadata": dict(self.metadata),
        }
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GraphMeta:
        d = json.loads(text)
        return cls(
            version=int(d["version"]),
            base_version=int(d["base_version"]),
            concept_count=int(d["concept_count"]),
            edge_count=int(d["edge_count"]),
            created_at_ms=int(d["created_at_ms"]),
            author=str(d["author"]),
            reason=str(d.get("reason", "")),
            metadata={str(k): str(v) for k, v in d.get("metadata", {}).items()},
        )


def empty_prototypes(n: int) -> sp.csr_matrix:
    """No prototypes over ``n`` concepts."""
    return sp.csr_matrix((0, n), dtype=np.float64)


@dataclass(frozen=True)
class StoredGraph:
    """One graph version: its header, the energy model and the prototypes it is meant to hold.

    Attributes:
        meta: the header.
        graph: the energy model (``graph.version == meta.version``).
        prototypes: (P, N) CSR {0, 1}: the consolidated memories (the pruner's guard checks them).
        support: (P,) episodes merged into each prototype (its rehearsal weight).
    """

    meta: GraphMeta
    graph: ConceptGraph
    prototypes: sp.csr_matrix
    support: NDArray[np.int64]

    @classmethod
    def empty(cls) -> StoredGraph:
        """Version 0: no concepts, no edges."""
        meta = GraphMeta(0, 0, 0, 0, 0, "empty")
        return cls(meta, ConceptGraph.empty(ConceptIndex()), empty_prototypes(0), np.zeros(0, int))


def _ids_to_blob(ids: tuple[str, ...]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    # A byte blob with offsets: a fixed-width unicode array would cost 4 bytes x the longest id
    # for every concept.
    encoded = [c.encode() for c in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _ids_from_blob(blob: NDArray[np.uint8], offsets: NDArray[np.int64]) -> tuple[str, ...]:
    raw = blob.tobytes()
    return tuple(raw[offsets[i] : offsets[i + 1]].decode() for i in range(len(offsets) - 1))


def validate_graph(
    base: StoredGraph,
    concept_ids: tuple[str, ...],
    biases: NDArray[np.float64],
    edge_i: NDArray[np.int64],
    edge_j: NDArray[np.int64],
    edge_w: NDArray[np.float64],
) -> ConceptGraph:
    """Check a committed graph against the rules of a version and build its model.

    Rules: the concept list extends the base's (positions never move); ids are unique and
    non-empty; one finite bias per concept; edges have ``0 <= i < j < N``, finite weights and
    appear once.

    Raises:
        InvalidGraph: naming the first field that breaks a rule and the fix.
    """
    n = len(concept_ids)
    old = base.graph.index.ids
    if concept_ids[: len(old)] != old:
        raise InvalidGraph(
            f"concept_ids must start with the {len(old)} concepts of base version "
            f"{base.meta.version} in the same order (a concept keeps its position): read the "
            "base graph and append new concepts after its list"
        )
    try:
        index = ConceptIndex(concept_ids)
    except ValueError as exc:
        raise InvalidGraph(f"concept_ids: {exc}") from None
    if biases.shape != (n,):
        raise InvalidGraph(
            f"biases has {biases.shape[0]} values for {n} concepts: send one bias per concept id"
        )
    if not np.all(np.isfinite(biases)):
        raise InvalidGraph("biases holds NaN or inf: send finite biases")
    if not (len(edge_i) == len(edge_j) == len(edge_w)):
        raise InvalidGraph(
            f"edge_i, edge_j and edge_w have {len(edge_i)}, {len(edge_j)} and {len(edge_w)} "
            "entries: send the three in parallel, one entry per edge"
        )
    if len(edge_i):
        if edge_i.min() < 0 or edge_j.max() >= n:
            raise InvalidGraph(f"edge_i/edge_j hold an index outside [0, {n}): index concept_ids")
        if np.any(edge_i >= edge_j):
            bad = int(np.flatnonzero(edge_i >= edge_j)[0])
            raise InvalidGraph(
                f"edge {bad} has i={edge_i[bad]} >= j={edge_j[bad]}: send each undirected edge "
                "once with i < j (no self-edges)"
            )
        if not np.all(np.isfinite(edge_w)):
            raise InvalidGraph("edge_w holds NaN or inf: send finite weights")
        keys = edge_i * n + edge_j
        if np.unique(keys).size != keys.size:
            raise InvalidGraph("an edge (i, j) appears twice: send each undirected edge once")
    keep = edge_w != 0.0
    upper = sp.coo_matrix((edge_w[keep], (edge_i[keep], edge_j[keep])), shape=(n, n))
    w = sp.csr_matrix(upper + upper.T)
    w.sort_indices()
    return ConceptGraph(index, w, biases)


class GraphStore:
    """Versioned graphs under ``root``, the last ``keep`` retained.

    Thread-safe; commits are also serialised across processes sharing ``root`` (flock). The latest
    version is cached in memory and re-checked against the directory on every read, so a commit by
    another replica is seen.
    """

    def __init__(self, root: Path | str, keep: int = 10) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep} must be >= 1")
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._cache: StoredGraph | None = None
        for stale in self.root.glob(".tmp-*"):  # a crash mid-write leaves these; never valid
            stale.unlink(missing_ok=True)

    def _path(self, version: int) -> Path:
        return self.root / f"v{version:012d}.npz"

    def versions(self) -> list[int]:
        """Retained version numbers, oldest first."""
        found = []
        for entry in os.scandir(self.root):
            m = _NAME.match(entry.name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def latest_version(self) -> int:
        """The newest version (0 when nothing was ever committed)."""
        v = self.versions()
        return v[-1] if v else 0

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock, open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def read(self, version: int = 0) -> StoredGraph:
        """Version ``version`` (0: the latest; the empty graph when none exists).

        Raises:
            VersionNotFound: if that version is not retained.
        """
        with self._lock:
            latest = self.latest_version()
            want = latest if version == 0 else version
            if want == 0:
                return StoredGraph.empty()
            cached = self._cache
            if cached is not None and cached.meta.version == want:
                return cached
            out = self._load(want)
            if want == latest:
                self._cache = out
            return out

    def meta(self, version: int) -> GraphMeta:
        """The header of a retained version (reads only the header from disk)."""
        cached = self._cache
        if cached is not None and cached.meta.version == version:
            return cached.meta
        try:
            with np.load(self._path(version), allow_pickle=False) as z:
                return GraphMeta.from_json(str(z["header"]))
        except FileNotFoundError:
            raise VersionNotFound(self._missing(version)) from None

    def list_meta(self) -> list[GraphMeta]:
        """Headers of the retained versions, newest first."""
        out = []
        for v in reversed(self.versions()):
            with contextlib.suppress(VersionNotFound):  # dropped by a concurrent commit
                out.append(self.meta(v))
        return out

    def _missing(self, version: int) -> str:
        kept = self.versions()
        span = f"{kept[0]}..{kept[-1]}" if kept else "none yet"
        return f"graph version {version} does not exist or was dropped (retained: {span})"

    def _load(self, version: int) -> StoredGraph:
        try:
            z = np.load(self._path(version), allow_pickle=False)
        except FileNotFoundError:
            raise VersionNotFound(self._missing(version)) from None
        with z:
            meta = GraphMeta.from_json(str(z["header"]))
            ids = _ids_from_blob(z["ids_blob"], z["ids_offsets"])
            n = len(ids)
            ei, ej, ew = z["edge_i"], z["edge_j"], z["edge_w"]
            upper = sp.coo_matrix((ew, (ei, ej)), shape=(n, n))
            w = sp.csr_matrix(upper + upper.T)
            w.sort_indices()
            graph = ConceptGraph(ConceptIndex(ids), w, z["biases"].astype(np.float64), version)
            indptr, indices = z["proto_indptr"], z["proto_indices"]
            protos = sp.csr_matrix(
                (np.ones(len(indices)), indices, indptr), shape=(len(indptr) - 1, n)
            )
            support = z["proto_support"].astype(np.int64)
        return StoredGraph(meta, graph, protos, support)

    def commit(
        self,
        base_version: int,
        graph: ConceptGraph,
        prototypes: sp.csr_matrix | None,
        support: NDArray[np.int64] | None,
        author: str,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredGraph:
        """Store ``graph`` as the version after ``base_version``; returns what was stored.

        ``prototypes`` None keeps the base version's prototypes (resized to the new index), so a
        writer that only changes weights (the pruner) cannot drop the stored memories by omission.

        Raises:
            VersionConflict: if ``base_version`` is not the latest version.
            InvalidGraph: if the concept list does not extend the base's or shapes disagree.
        """
        with self._exclusive():
            latest = self.latest_version()
            if base_version != latest:
                raise VersionConflict(
                    f"base_version {base_version} is not the latest graph version ({latest}): "
                    "read the latest version, redo the change on it and commit again"
                )
            base = self.read(latest)
            n = graph.size
            if graph.index.ids[: base.graph.size] != base.graph.index.ids:
                raise InvalidGraph(
                    "concept_ids must start with the base version's concepts in the same order"
                )
            if prototypes is None:
                protos = sp.csr_matrix(
                    (base.prototypes.data, base.prototypes.indices, base.prototypes.indptr),
                    shape=(base.prototypes.shape[0], n),
                )
                sup = base.support
            else:
                protos = sp.csr_matrix(prototypes)
                sup = (
                    np.ones(protos.shape[0], dtype=np.int64)
                    if support is None
                    else np.asarray(support, dtype=np.int64)
                )
                if protos.shape[1] != n or sup.shape != (protos.shape[0],):
                    raise InvalidGraph(
                        f"prototypes must be (P, {n}) with one support count per prototype"
                    )
            version = latest + 1
            meta = GraphMeta(
                version=version,
                base_version=base_version,
                concept_count=n,
                edge_count=graph.edge_count,
                created_at_ms=time.time_ns() // 1_000_000,
                author=author or "unspecified",
                reason=reason,
                metadata=dict(metadata or {}),
            )
            stored = StoredGraph(meta, replace(graph, version=version), protos, sup)
            self._write(stored)
            self._cache = stored
            self._retain()
            return stored

    def _write(self, stored: StoredGraph) -> None:
        g = stored.graph
        upper = sp.triu(g.weights, k=1, format="coo")
        blob, offsets = _ids_to_blob(g.index.ids)
        protos = sp.csr_matrix(stored.prototypes)
        protos.sort_indices()
        arrays: dict[str, NDArray[np.generic]] = {
            "header": np.asarray(stored.meta.to_json()),
            "ids_blob": blob,
            "ids_offsets": offsets,
            "biases": g.biases.astype(np.float64),
            "edge_i": upper.row.astype(np.int32),
            "edge_j": upper.col.astype(np.int32),
            "edge_w": upper.data.astype(np.float64),
            "proto_indptr": protos.indptr.astype(np.int64),
            "proto_indices": protos.indices.astype(np.int32),
            "proto_support": stored.support.astype(np.int64),
        }
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path(stored.meta.version))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _retain(self) -> None:
        for v in self.versions()[: -self.keep]:
            self._path(v).unlink(missing_ok=True)
