"""The pruner's client of the SleepScheduler's versioned graph API (tori.sleep.v1).

The graph belongs to the scheduler; the pruner reads a version (ReadGraph, streamed chunks) and
commits a new one against the version it read (CommitGraph). :class:`SchedulerClient` is the
gRPC :class:`~mcp_services.sparse_pruner.domain.ports.GraphSource`; it turns statuses into the
errors drawn there: FAILED_PRECONDITION is VersionConflict, NOT_FOUND VersionGone, UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and CANCELLED SchedulerUnavailable, any other status
(INVALID_ARGUMENT for a graph the scheduler rejects) a plain SchedulerError carrying the
scheduler's message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import grpc
import numpy as np

from mcp_services.common.clients import ClientFactory
from mcp_services.common.namespaces import DEFAULT, namespace_metadata
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sparse_pruner.domain.ports import (
    GraphVersion,
    SchedulerError,
    SchedulerUnavailable,
    VersionConflict,
    VersionGone,
)
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot, snapshot_from_edges

# Edges per CommitGraph chunk: ~1.3 MB of proto per chunk, far below the message limit.
COMMIT_CHUNK_EDGES = 65_536
_PROTO_ENTRIES_PER_CHUNK = 262_144


def _translate(exc: grpc.aio.AioRpcError, what: str, target: str) -> SchedulerError:
    # Plain words, not RPC names: the message reaches MCP callers through a failed job.
    code = exc.code()
    msg = f"the sleep-scheduler at {target} failed {what}: {code.name}: {exc.details()}"
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return VersionConflict(msg)
    if code == grpc.StatusCode.NOT_FOUND:
        return VersionGone(msg)
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    ):
        return SchedulerUnavailable(msg)
    return SchedulerError(msg)


class SchedulerClient:
    """Async client over one channel to the scheduler at ``target`` (host:port, named in errors);
    every call has ``timeout_s``. :meth:`of` takes the channel from the fleet's client factory
    (the scheduler's dial address and the pruner's key)."""

    def __init__(
        self, channel: grpc.aio.Channel, target: str, timeout_s: float, namespace: str = DEFAULT
    ) -> None:
        self.target = target
        self._timeout = timeout_s
        # Every call reads or commits this namespace's graph only.
        self._md = namespace_metadata(namespace)
        self._channel = channel
        self._stub = sleep_pb2_grpc.SleepSchedulerStub(self._channel)

    @classmethod
    def of(
        cls, clients: ClientFactory, timeout_s: float, namespace: str = DEFAULT
    ) -> SchedulerClient:
        return cls(
            clients.aio_channel("sleep_scheduler"),
            clients.address("sleep_scheduler"),
            timeout_s,
            namespace,
        )

    async def close(self) -> None:
        await self._channel.close()

    async def read_graph(self, version: int = 0) -> GraphSnapshot:
        """Read ``version`` (0: the latest) whole."""
        ids: list[str] = []
        biases: list[float] = []
        ei: list[int] = []
        ej: list[int] = []
        ew: list[float] = []
        protos: list[np.ndarray] = []
        support: list[int] = []
        header: sleep_pb2.GraphHeader | None = None
        call = self._stub.ReadGraph(
            sleep_pb2.ReadGraphRequest(version=version),
            timeout=self._timeout,
            metadata=self._md,
        )
        try:
            async for chunk in call:
                if chunk.HasField("header"):
                    header = chunk.header
                ids.extend(chunk.concept_ids)
                biases.extend(chunk.biases)
                ei.extend(chunk.edge_i)
                ej.extend(chunk.edge_j)
                ew.extend(chunk.edge_w)
                for p in chunk.prototypes:
                    protos.append(np.sort(np.asarray(p.active, dtype=np.int64)))
                    support.append(int(p.support))
        except grpc.aio.AioRpcError as exc:
            raise _translate(
                exc, f"reading graph version {version or 'latest'}", self.target
            ) from None
        if header is None:
            raise SchedulerError(
                f"the sleep-scheduler at {self.target} sent a graph without its header: "
                "it is broken; check its log"
            )
        return snapshot_from_edges(
            int(header.version),
            tuple(ids),
            np.asarray(biases, dtype=np.float64),
            np.asarray(ei, dtype=np.int64),
            np.asarray(ej, dtype=np.int64),
            np.asarray(ew, dtype=np.float64),
            prototypes=tuple(protos),
            support=tuple(support),
            created_at_ms=header.created_at.ToMilliseconds()
            if header.HasField("created_at")
            else 0,
            author=header.author,
            reason=header.reason,
            metadata=dict(header.metadata),
        )

    async def commit_graph(
        self,
        graph: GraphSnapshot,
        base_version: int,
        author: str,
        reason: str,
        metadata: Mapping[str, str] | None = None,
    ) -> GraphVersion:
        """Commit ``graph`` (with its prototypes) on top of ``base_version``; returns its header.

        Raises:
            VersionConflict: ``base_version`` is no longer the latest.
        """
        header = sleep_pb2.GraphHeader(
            base_version=base_version,
            concept_count=graph.n_concepts,
            edge_count=graph.edge_count,
            author=author,
            reason=reason,
        )
        header.metadata.update(metadata or {})
        try:
            response = await self._stub.CommitGraph(
                _chunks(graph, header), timeout=self._timeout, metadata=self._md
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(
                exc, f"committing a graph on version {base_version}", self.target
            ) from None
        return version_of_header(response.header)

    async def list_versions(self) -> list[GraphVersion]:
        """Headers of the retained versions, newest first."""
        try:
            response = await self._stub.ListGraphVersions(
                sleep_pb2.ListGraphVersionsRequest(), timeout=self._timeout, metadata=self._md
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "listing the graph versions", self.target) from None
        return [version_of_header(v.header) for v in response.versions]


def version_of_header(header: sleep_pb2.GraphHeader) -> GraphVersion:
    """The value object of a version's proto header (no created_at: 0)."""
    return GraphVersion(
        version=int(header.version),
        base_version=int(header.base_version),
        created_at_ms=header.created_at.ToMilliseconds() if header.HasField("created_at") else 0,
        concept_count=int(header.concept_count),
        edge_count=int(header.edge_count),
        author=header.author,
        reason=header.reason,
        metadata=dict(header.metadata),
    )


async def _chunks(
    graph: GraphSnapshot, header: sleep_pb2.GraphHeader
) -> AsyncIterator[sleep_pb2.GraphChunk]:
    """Header and concepts first, then edges, then prototypes, each in bounded chunks."""
    ei, ej, ew = graph.upper_edges()
    ids = graph.concept_ids
    yield sleep_pb2.GraphChunk(header=header)
    for lo in range(0, len(ids), COMMIT_CHUNK_EDGES):
        yield sleep_pb2.GraphChunk(
            concept_ids=ids[lo : lo + COMMIT_CHUNK_EDGES],
            biases=graph.biases[lo : lo + COMMIT_CHUNK_EDGES].tolist(),
        )
    for lo in range(0, ew.size, COMMIT_CHUNK_EDGES):
        hi = lo + COMMIT_CHUNK_EDGES
        yield sleep_pb2.GraphChunk(
            edge_i=ei[lo:hi].tolist(), edge_j=ej[lo:hi].tolist(), edge_w=ew[lo:hi].tolist()
        )
    chunk = sleep_pb2.GraphChunk()
    entries = 0
    for active, support in zip(graph.prototypes, graph.support, strict=True):
        chunk.prototypes.add(active=active.tolist(), support=support)
        entries += len(active) + 1
        if entries >= _PROTO_ENTRIES_PER_CHUNK:
            yield chunk
            chunk, entries = sleep_pb2.GraphChunk(), 0
    if entries:
        yield chunk
