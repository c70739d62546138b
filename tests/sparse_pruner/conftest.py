"""A real SleepScheduler and a real SparsePruner on free ports, and planted graphs to prune.

The scheduler owns the graph; tests seed it through its CommitGraph RPC (as consolidation
would) and the pruner reads and commits through the same API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config_schema import Settings
from mcp_services.common.server import Context, ServerThread
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from mcp_services.sparse_pruner.adapters.scheduler_client import SchedulerClient
from mcp_services.sparse_pruner.domain import ConceptGraph
from mcp_services.sparse_pruner.domain.ports import GraphSource
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot, from_pm1, snapshot_from_edges
from mcp_services.sparse_pruner.server import SparsePrunerService
from tests.conftest import SettingsFactory

from .planted import projection_graph, random_patterns


def planted_snapshot(n: int, alpha: float, seed: int) -> tuple[GraphSnapshot, np.ndarray]:
    """A {0, 1} graph storing ``round(alpha * n)`` random patterns, with them as prototypes."""
    xi = random_patterns(round(alpha * n), n, seed)
    pm1: ConceptGraph = projection_graph(xi)
    like = GraphSnapshot(
        version=0,
        concept_ids=tuple(f"concept:{k}" for k in range(n)),
        weights=sp.csr_matrix((n, n)),
        biases=np.zeros(n),
        prototypes=tuple(np.flatnonzero(row > 0).astype(np.int64) for row in xi),
        support=tuple(3 for _ in xi),
    )
    return from_pm1(pm1, like), xi


def chunks_of(
    graph: GraphSnapshot, base_version: int, author: str = "consolidation"
) -> Iterator[sleep_pb2.GraphChunk]:
    ei, ej, ew = graph.upper_edges()
    yield sleep_pb2.GraphChunk(
        header=sleep_pb2.GraphHeader(base_version=base_version, author=author),
        concept_ids=graph.concept_ids,
        biases=graph.biases.tolist(),
    )
    yield sleep_pb2.GraphChunk(edge_i=ei.tolist(), edge_j=ej.tolist(), edge_w=ew.tolist())
    yield sleep_pb2.GraphChunk(
        prototypes=[
            sleep_pb2.Prototype(active=p.tolist(), support=s)
            for p, s in zip(graph.prototypes, graph.support, strict=True)
        ]
    )


def read_back(stub: sleep_pb2_grpc.SleepSchedulerStub, version: int = 0) -> GraphSnapshot:
    """A version as the scheduler serves it (sync twin of SchedulerClient.read_graph)."""
    ids: list[str] = []
    biases: list[float] = []
    ei: list[int] = []
    ej: list[int] = []
    ew: list[float] = []
    protos: list[np.ndarray] = []
    support: list[int] = []
    v = 0
    for chunk in stub.ReadGraph(sleep_pb2.ReadGraphRequest(version=version)):
        if chunk.HasField("header"):
            v = chunk.header.version
        ids += chunk.concept_ids
        biases += chunk.biases
        ei += chunk.edge_i
        ej += chunk.edge_j
        ew += chunk.edge_w
        protos += [np.sort(np.asarray(p.active, dtype=np.int64)) for p in chunk.prototypes]
        support += [p.support for p in chunk.prototypes]
    return snapshot_from_edges(
        v,
        tuple(ids),
        np.asarray(biases),
        np.asarray(ei, dtype=np.int64),
        np.asarray(ej, dtype=np.int64),
        np.asarray(ew),
        prototypes=tuple(protos),
        support=tuple(support),
    )


@dataclass
class Fleet:
    scheduler: ServerThread
    pruner: ServerThread
    sched: sleep_pb2_grpc.SleepSchedulerStub
    stub: pruner_pb2_grpc.SparsePrunerStub
    settings: Settings
    channels: tuple[grpc.Channel, grpc.Channel]

    @property
    def pruner_target(self) -> str:
        return f"127.0.0.1:{self.pruner.running.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.pruner.running.metrics_port}/metrics"

    def seed(self, graph: GraphSnapshot, base_version: int = 0) -> int:
        """Commit ``graph`` as consolidation would; returns the new version."""
        response = self.sched.CommitGraph(chunks_of(graph, base_version))
        return int(response.header.version)

    def latest_version(self) -> int:
        versions = self.sched.ListGraphVersions(sleep_pb2.ListGraphVersionsRequest()).versions
        return int(versions[0].header.version) if versions else 0

    def wait_job(self, job_id: str, within: float = 60.0) -> pruner_pb2.PruningJob:
        deadline = time.monotonic() + within
        while True:
            job: pruner_pb2.PruningJob = self.stub.GetPruningStatus(
                pruner_pb2.GetPruningStatusRequest(job_id=job_id)
            )
            if job.state not in (pruner_pb2.JOB_STATE_PENDING, pruner_pb2.JOB_STATE_RUNNING):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job.state} after {within} s")
            time.sleep(0.02)


FleetFactory = Callable[..., Fleet]


@pytest.fixture
def start_fleet(make_settings: SettingsFactory) -> Iterator[FleetFactory]:
    """Start a scheduler and a pruner sharing one configuration (overrides as keywords).

    ``wrap``, if given, is applied to the pruner's real scheduler client (e.g. HeldCommit, to
    hold its first commit while the test commits another version)."""
    started: list[Fleet] = []

    def factory(
        wrap: Callable[[GraphSource], GraphSource] | None = None, **overrides: Any
    ) -> Fleet:
        settings = make_settings(**overrides)
        sched = ServerThread(
            "sleep-scheduler", "sleep_scheduler", SleepSchedulerService, settings
        ).start()

        def service(ctx: Context) -> SparsePrunerService:
            if wrap is None:
                return SparsePrunerService(ctx)
            cfg = ctx.settings.sparse_pruner
            real = SchedulerClient.of(ClientFactory.of(ctx.settings), cfg.scheduler_timeout_s)
            return SparsePrunerService(ctx, wrap(real))

        pruner = ServerThread("sparse-pruner", "sparse_pruner", service, settings)
        pruner.start()
        ch_s = grpc.insecure_channel(f"127.0.0.1:{sched.running.grpc_port}")
        ch_p = grpc.insecure_channel(f"127.0.0.1:{pruner.running.grpc_port}")
        fleet = Fleet(
            sched,
            pruner,
            sleep_pb2_grpc.SleepSchedulerStub(ch_s),
            pruner_pb2_grpc.SparsePrunerStub(ch_p),
            settings,
            (ch_s, ch_p),
        )
        started.append(fleet)
        return fleet

    yield factory
    for f in started:
        for ch in f.channels:
            ch.close()
        f.pruner.stop()
        f.scheduler.stop()


@pytest.fixture
def fleet(start_fleet: FleetFactory) -> Fleet:
    return start_fleet()
