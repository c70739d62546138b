"""Conversions between tori.sleep.v1 messages and the scheduler's value objects.

The servicer calls these so that the domain and the store never handle ``_pb2`` objects. Parsing
functions raise :class:`BadRequest` with a message naming the field and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.common.errors import InputError
from mcp_services.common.timestamps import timestamp_of_ms
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.adapters.graph_store import (
    GraphMeta,
    StoredGraph,
    empty_prototypes,
)
from mcp_services.sleep_scheduler.domain import (
    ConceptActivation,
    ConceptGraph,
    ConceptIndex,
)

DEFAULT_CHUNK_EDGES = 65_536
MAX_CHUNK_EDGES = 1 << 20
# Concept ids per chunk are bounded by their bytes too, so one chunk stays far below the default
# 16 MiB message limit whatever the ids' lengths.
_CHUNK_ID_BYTES = 2 << 20
_CHUNK_PROTO_ENTRIES = 262_144


class BadRequest(InputError):
    """A request field is malformed; the message names it and the fix."""


def header_of_meta(meta: GraphMeta) -> sleep_pb2.GraphHeader:
    h = sleep_pb2.GraphHeader(
        version=meta.version,
        base_version=meta.base_version,
        concept_count=meta.concept_count,
        edge_count=meta.edge_count,
        author=meta.author,
        reason=meta.reason,
    )
    if meta.created_at_ms:
        h.created_at.CopyFrom(timestamp_of_ms(meta.created_at_ms))
    h.metadata.update(meta.metadata)
    return h


def graph_chunks(stored: StoredGraph, chunk_edges: int) -> Iterator[sleep_pb2.GraphChunk]:
    """The chunks of a stored graph: header first, then concepts, edges and prototypes.

    Raises:
        BadRequest: if ``chunk_edges`` is negative or too large.
    """
    if chunk_edges < 0 or chunk_edges > MAX_CHUNK_EDGES:
        raise BadRequest(
            f"chunk_edges={chunk_edges} is out of range: use 0 (default {DEFAULT_CHUNK_EDGES}) "
            f"up to {MAX_CHUNK_EDGES}"
        )
    per = chunk_edges or DEFAULT_CHUNK_EDGES
    g = stored.graph
    ids = g.index.ids
    biases = g.biases
    upper = sp.triu(g.weights, k=1, format="coo")
    ei, ej, ew = upper.row, upper.col, upper.data
    protos = sp.csr_matrix(stored.prototypes)
    chunk = sleep_pb2.GraphChunk(header=header_of_meta(stored.meta))
    first = True
    c = e = p = 0
    while first or c < len(ids) or e < len(ew) or p < protos.shape[0]:
        if not first:
            chunk = sleep_pb2.GraphChunk()
        first = False
        if c < len(ids):
            stop, size = c, 0
            while stop < len(ids) and stop - c < per and size < _CHUNK_ID_BYTES:
                size += len(ids[stop]) + 4
                stop += 1
            chunk.concept_ids.extend(ids[c:stop])
            chunk.biases.extend(biases[c:stop].tolist())
            c = stop
        elif e < len(ew):
            stop = min(e + per, len(ew))
            chunk.edge_i.extend(ei[e:stop].tolist())
            chunk.edge_j.extend(ej[e:stop].tolist())
            chunk.edge_w.extend(ew[e:stop].tolist())
            e = stop
        elif p < protos.shape[0]:
            entries = 0
            while p < protos.shape[0] and entries < _CHUNK_PROTO_ENTRIES:
                row = protos.indices[protos.indptr[p] : protos.indptr[p + 1]]
                chunk.prototypes.add(active=row.tolist(), support=int(stored.support[p]))
                entries += len(row) + 1
                p += 1
        yield chunk


@dataclass
class GraphDraft:
    """A graph being received chunk by chunk (CommitGraph)."""

    header: sleep_pb2.GraphHeader | None = None
    concept_ids: list[str] = field(default_factory=list)
    biases: list[float] = field(default_factory=list)
    edge_i: list[NDArray[np.int64]] = field(default_factory=list)
    edge_j: list[NDArray[np.int64]] = field(default_factory=list)
    edge_w: list[NDArray[np.float64]] = field(default_factory=list)
    proto_rows: list[NDArray[np.int64]] = field(default_factory=list)
    proto_support: list[int] = field(default_factory=list)
    chunks: int = 0

    def add(self, chunk: sleep_pb2.GraphChunk) -> None:
        """Take one chunk.

        Raises:
            BadRequest: if the header is missing from the first chunk or repeated later, or a
                chunk's parallel lists disagree.
        """
        has_header = chunk.HasField("header")
        if self.chunks == 0 and not has_header:
            raise BadRequest(
                "the first GraphChunk has no header: send header (with base_version) first"
            )
        if self.chunks > 0 and has_header:
            raise BadRequest(f"chunk {self.chunks} repeats the header: send it in chunk 0 only")
        if has_header:
            self.header = chunk.header
        self.chunks += 1
        if len(chunk.concept_ids) != len(chunk.biases):
            raise BadRequest(
                f"chunk {self.chunks - 1} has {len(chunk.concept_ids)} concept_ids and "
                f"{len(chunk.biases)} biases: send one bias per concept id"
            )
        if not len(chunk.edge_i) == len(chunk.edge_j) == len(chunk.edge_w):
            raise BadRequest(
                f"chunk {self.chunks - 1} has {len(chunk.edge_i)} edge_i, {len(chunk.edge_j)} "
                f"edge_j and {len(chunk.edge_w)} edge_w: send them in parallel"
            )
        self.concept_ids.extend(chunk.concept_ids)
        self.biases.extend(chunk.biases)
        if len(chunk.edge_i):
            self.edge_i.append(np.asarray(chunk.edge_i, dtype=np.int64))
            self.edge_j.append(np.asarray(chunk.edge_j, dtype=np.int64))
            self.edge_w.append(np.asarray(chunk.edge_w, dtype=np.float64))
        for proto in chunk.prototypes:
            self.proto_rows.append(np.asarray(proto.active, dtype=np.int64))
            self.proto_support.append(int(proto.support))

    def arrays(
        self,
    ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        """(biases, edge_i, edge_j, edge_w) as arrays."""

        def cat(parts: Sequence[NDArray[np.generic]], dtype: type) -> NDArray[np.generic]:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        return (
            np.asarray(self.biases, dtype=np.float64),
            cat(self.edge_i, np.int64).astype(np.int64),
            cat(self.edge_j, np.int64).astype(np.int64),
            cat(self.edge_w, np.float64).astype(np.float64),
        )

    def prototypes(self, n: int) -> tuple[sp.csr_matrix | None, NDArray[np.int64] | None]:
        """The received prototypes (None when none were sent: the store keeps the base's).

        Raises:
            BadRequest: for an index outside the concept list, a repeat, or support < 0.
        """
        if not self.proto_rows:
            return None, None
        indptr = [0]
        for k, row in enumerate(self.proto_rows):
            if len(row) and (row.min() < 0 or row.max() >= n):
                raise BadRequest(
                    f"prototypes[{k}].active holds an index outside [0, {n}): index concept_ids"
                )
            if np.unique(row).size != row.size:
                raise BadRequest(f"prototypes[{k}].active repeats a concept: list each once")
            if self.proto_support[k] < 0:
                raise BadRequest(f"prototypes[{k}].support is negative: send an episode count")
            indptr.append(indptr[-1] + len(row))
        idx = np.concatenate(self.proto_rows)
        protos = sp.csr_matrix(
            (np.ones(len(idx)), idx, np.asarray(indptr)), shape=(len(self.proto_rows), n)
        )
        protos.sort_indices()
        return protos, np.asarray(self.proto_support, dtype=np.int64)


def cue_of_request(request: sleep_pb2.CompleteRequest) -> ConceptActivation:
    """The cue of a Complete request.

    Raises:
        BadRequest: if the lists differ in length, an id is empty or repeated, or a strength is
            outside [0, 1].
    """
    ids, strengths = list(request.concept_ids), list(request.strengths)
    if len(ids) != len(strengths):
        raise BadRequest(
            f"concept_ids has {len(ids)} entries but strengths has {len(strengths)}: send one "
            "strength per concept id"
        )
    for k, (cid, s) in enumerate(zip(ids, strengths, strict=True)):
        if not cid:
            raise BadRequest(f"concept_ids[{k}] is empty: concept ids are non-empty strings")
        if not (math.isfinite(s) and 0.0 <= s <= 1.0):
            raise BadRequest(f"strengths[{k}]={s} is outside [0, 1]: clip strengths to [0, 1]")
    if len(set(ids)) != len(ids):
        raise BadRequest("concept_ids repeats an id: list each concept once")
    return ConceptActivation(tuple(ids), tuple(float(s) for s in strengths))


def commit_chunks(
    base_version: int,
    graph: ConceptGraph,
    prototypes: sp.csr_matrix | None = None,
    support: NDArray[np.int64] | None = None,
    author: str = "",
    reason: str = "",
    chunk_edges: int = DEFAULT_CHUNK_EDGES,
) -> list[sleep_pb2.GraphChunk]:
    """The CommitGraph stream for ``graph`` derived from ``base_version`` (a client helper).

    ``prototypes`` None sends none, so the server keeps the base version's.
    """
    n = graph.size
    protos = empty_prototypes(n) if prototypes is None else sp.csr_matrix(prototypes)
    sup = np.ones(protos.shape[0], dtype=np.int64) if support is None else support
    meta = GraphMeta(0, base_version, n, graph.edge_count, 0, author, reason)
    chunks = list(graph_chunks(StoredGraph(meta, graph, protos, sup), chunk_edges))
    chunks[0].header.ClearField("version")
    return chunks


def stored_of_chunks(chunks: Iterable[sleep_pb2.GraphChunk]) -> StoredGraph:
    """A ReadGraph stream as a :class:`StoredGraph` (a client helper; raises BadRequest)."""
    draft = GraphDraft()
    for chunk in chunks:
        draft.add(chunk)
    if draft.header is None:
        raise BadRequest("the stream carried no chunk")
    h = draft.header
    biases, ei, ej, ew = draft.arrays()
    ids = tuple(draft.concept_ids)
    n = len(ids)
    upper = sp.coo_matrix((ew, (ei, ej)), shape=(n, n))
    w = sp.csr_matrix(upper + upper.T)
    w.sort_indices()
    graph = ConceptGraph(ConceptIndex(ids), w, biases, h.version)
    protos, support = draft.prototypes(n)
    meta = GraphMeta(
        version=h.version,
        base_version=h.base_version,
        concept_count=h.concept_count,
        edge_count=h.edge_count,
        created_at_ms=h.created_at.ToMilliseconds() if h.HasField("created_at") else 0,
        author=h.author,
        reason=h.reason,
        metadata=dict(h.metadata),
    )
    return StoredGraph(
        meta,
        graph,
        empty_prototypes(n) if protos is None else protos,
        np.zeros(0, dtype=np.int64) if support is None else support,
    )
