"""The graph half of the SleepScheduler servicer: read, commit, list, stats and completion.

Store and numerics run on worker threads; the event loop only moves messages. Status codes:
INVALID_ARGUMENT (a field, named), NOT_FOUND (version not retained), FAILED_PRECONDITION (commit
against a stale base), UNAVAILABLE (storage failed): GRAPH_ERRORS below, part of the servicer's
error map (server.py; anything unmapped is INTERNAL).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import TypeVar

import grpc
import numpy as np
import structlog

from mcp_services.common.rpc import Rules, abort
from mcp_services.common.stream_limits import StreamLimits, StreamRefused
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.adapters.graph_store import (
    GraphStore,
    InvalidGraph,
    StoredGraph,
    VersionConflict,
    VersionNotFound,
    validate_graph,
)
from mcp_services.sleep_scheduler.domain import ConceptActivation
from mcp_services.sleep_scheduler.domain.completion import complete
from mcp_services.sleep_scheduler.rpc.codec import (
    BadRequest,
    GraphDraft,
    cue_of_request,
    graph_chunks,
    header_of_meta,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)

DEFAULT_MAX_SWEEPS = 100
MAX_SWEEPS = 10_000


class GraphStorageFailed(Exception):
    """The graph store's disk failed (an OSError); the message names the directory to check."""


# The graph RPCs' errors (BadRequest is an InputError: INVALID_ARGUMENT by default).
GRAPH_ERRORS: Rules = {
    InvalidGraph: grpc.StatusCode.INVALID_ARGUMENT,
    VersionNotFound: grpc.StatusCode.NOT_FOUND,
    VersionConflict: grpc.StatusCode.FAILED_PRECONDITION,
    GraphStorageFailed: grpc.StatusCode.UNAVAILABLE,
    StreamRefused: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class GraphRpcs:
    """ReadGraph, CommitGraph, ListGraphVersions, GetGraphStats and Complete over a store."""

    def __init__(
        self, store: GraphStore, executor: Executor, streams: StreamLimits | None = None
    ) -> None:
        self.store = store
        self._executor = executor
        # CommitGraph's stream bounds (sleep_scheduler.max_concurrent_streams/max_stream_bytes):
        # a draft is held in memory until the stream ends, so each one and their number are capped.
        self._streams = streams or StreamLimits(4, 1 << 30, "sleep_scheduler")

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on a worker thread; a disk failure is GraphStorageFailed."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except OSError as exc:
            log.error("graph_storage_failed", error=str(exc))
            raise GraphStorageFailed(
                f"graph storage failed ({exc}); check the disk under {self.store.root}"
            ) from exc

    async def _version(self, context: grpc.aio.ServicerContext, version: int) -> StoredGraph:
        if version < 0:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"version={version} is negative: use 0 for the latest or a listed version",
            )
        return await self.call(self.store.read, version)

    async def read_graph(
        self, request: sleep_pb2.ReadGraphRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sleep_pb2.GraphChunk]:
        stored = await self._version(context, request.version)
        for chunk in list(graph_chunks(stored, request.chunk_edges)):
            yield chunk

    async def commit_graph(
        self,
        request_iterator: AsyncIterator[sleep_pb2.GraphChunk],
        context: grpc.aio.ServicerContext,
    ) -> sleep_pb2.CommitGraphResponse:
        draft = GraphDraft()
        with self._streams.open() as budget:
            async for chunk in request_iterator:
                budget.charge(chunk.ByteSize())
                draft.add(chunk)
        if draft.header is None:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "the stream carried no GraphChunk: send at least one chunk with the header",
            )
        stored = await self.call(self._commit, draft)
        log.info(
            "graph_committed",
            version=stored.meta.version,
            base=stored.meta.base_version,
            author=stored.meta.author,
            concepts=stored.meta.concept_count,
            edges=stored.meta.edge_count,
        )
        return sleep_pb2.CommitGraphResponse(header=header_of_meta(stored.meta))

    def _commit(self, draft: GraphDraft) -> StoredGraph:
        header = draft.header
        assert header is not None
        if header.base_version < 0:
            raise BadRequest(
                f"header.base_version={header.base_version} is negative: send the version the "
                "graph was derived from (0: the empty graph)"
            )
        # The conflict check comes first: a stale writer learns to re-read before anything else.
        latest = self.store.latest_version()
        if header.base_version != latest:
            raise VersionConflict(
                f"base_version {header.base_version} is not the latest graph version ({latest}): "
                "read the latest version, redo the change on it and commit again"
            )
        base = self.store.read(header.base_version)
        biases, ei, ej, ew = draft.arrays()
        ids = tuple(draft.concept_ids)
        protos, support = draft.prototypes(len(ids))
        graph = validate_graph(base, ids, biases, ei, ej, ew)
        if header.concept_count and header.concept_count != len(ids):
            raise BadRequest(
                f"header.concept_count={header.concept_count} but the chunks carried {len(ids)} "
                "concepts: send every chunk (or leave concept_count 0)"
            )
        if header.edge_count and header.edge_count != graph.edge_count:
            raise BadRequest(
                f"header.edge_count={header.edge_count} but the chunks carried "
                f"{graph.edge_count} non-zero edges: send every chunk (or leave edge_count 0)"
            )
        return self.store.commit(
            header.base_version,
            graph,
            protos,
            support,
            header.author,
            header.reason,
            dict(header.metadata),
        )

    async def list_versions(
        self, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ListGraphVersionsResponse:
        metas = await self.call(self.store.list_meta)
        return sleep_pb2.ListGraphVersionsResponse(
            versions=[sleep_pb2.GraphVersionInfo(header=header_of_meta(m)) for m in metas]
        )

    async def stats(
        self, request: sleep_pb2.GetGraphStatsRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.GraphStats:
        stored = await self._version(context, request.version)
        return await self.call(graph_stats, stored)

    async def complete(
        self, request: sleep_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.CompleteResponse:
        cue = cue_of_request(request)
        if not 0 <= request.max_sweeps <= MAX_SWEEPS:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_sweeps={request.max_sweeps} is out of range: use 0 (default "
                f"{DEFAULT_MAX_SWEEPS}) up to {MAX_SWEEPS}",
            )
        stored = await self._version(context, request.version)
        sweeps = request.max_sweeps or DEFAULT_MAX_SWEEPS
        return await self.call(_complete, stored, cue, sweeps)


def _complete(
    stored: StoredGraph, cue: ConceptActivation, sweeps: int
) -> sleep_pb2.CompleteResponse:
    g = stored.graph
    protos = stored.prototypes
    res = complete(g, cue, max_sweeps=sweeps, prototypes=protos if protos.shape[0] else None)
    pos = g.index.positions(list(res.concept_ids)) if res.concept_ids else np.zeros(0, np.int64)
    strengths = np.zeros(0)
    if len(pos):
        h = np.asarray(g.weights[pos][:, pos].sum(axis=1)).ravel() + g.biases[pos]
        rel = h / g.field_scales()[pos]
        top = float(rel.max())
        strengths = np.clip(rel / top, 1e-6, 1.0) if top > 0 else np.ones(len(pos))
    order = np.argsort(-strengths, kind="stable")
    return sleep_pb2.CompleteResponse(
        concept_ids=[res.concept_ids[k] for k in order],
        strengths=[float(strengths[k]) for k in order],
        added=list(res.added),
        removed=list(res.removed),
        unknown=list(res.unknown),
        version=stored.meta.version,
        sweeps=res.sweeps,
        converged=res.settled,
        energy=res.energy,
        cue_overlap=res.cue_overlap,
        overlap=res.overlap,
        confidence=res.confidence,
        moved_away=res.moved_away,
        prototypes=int(protos.shape[0]),
    )


def graph_stats(stored: StoredGraph) -> sleep_pb2.GraphStats:
    """The GraphStats of a version."""
    g = stored.graph
    n = g.size
    data = np.abs(g.weights.data)
    degrees = np.diff(g.weights.indptr)
    return sleep_pb2.GraphStats(
        header=header_of_meta(stored.meta),
        density=g.edge_count / (n * (n - 1) / 2) if n > 1 else 0.0,
        mean_abs_weight=float(data.mean()) if data.size else 0.0,
        max_abs_weight=float(data.max()) if data.size else 0.0,
        prototype_count=int(stored.prototypes.shape[0]),
        connected_concepts=int(np.count_nonzero(degrees)),
    )
