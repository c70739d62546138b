"""The four services in one process, wired as in a fleet, for the property tests; each with
the fingerprint of its state (what a refused call must leave unchanged)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from mcp_services.common.config import load_config
from mcp_services.common.config_schema import Settings
from mcp_services.common.server import ServerThread, ServiceFactory
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from mcp_services.gen.tori.koopman.v1 import koopman_pb2
from mcp_services.gen.tori.pruner.v1 import pruner_pb2
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.koopman_learner.server import KoopmanLearnerService
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from mcp_services.sparse_pruner.server import SparsePrunerService
from tests.conftest import service_environ

CALL_TIMEOUT_S = 10.0


def _unary(channel: grpc.Channel, path: str, request: Message, reply: type[Message]) -> Any:
    return channel.unary_unary(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=reply.FromString,
    )(request, timeout=CALL_TIMEOUT_S)


def _vault_state(ch: grpc.Channel) -> tuple[Any, ...]:
    s = _unary(ch, "/tori.episodic.v1.EpisodicVault/GetStats", episodic_pb2.GetStatsRequest(),
               episodic_pb2.GetStatsResponse)  # fmt: skip
    return (s.episode_count, s.size_bytes, s.consolidated_count, s.last_seq)


def _scheduler_state(ch: grpc.Channel) -> tuple[Any, ...]:
    cfg = _unary(ch, "/tori.sleep.v1.SleepScheduler/GetConfig", sleep_pb2.GetConfigRequest(),
                 sleep_pb2.SchedulerConfig)  # fmt: skip
    versions = _unary(ch, "/tori.sleep.v1.SleepScheduler/ListGraphVersions",
                      sleep_pb2.ListGraphVersionsRequest(), sleep_pb2.ListGraphVersionsResponse)  # fmt: skip
    latest = versions.versions[0].header.version if versions.versions else 0
    return (cfg.SerializeToString(deterministic=True), latest)


def _pruner_state(ch: grpc.Channel) -> tuple[Any, ...]:
    cfg = _unary(ch, "/tori.pruner.v1.SparsePruner/GetConfig", pruner_pb2.GetConfigRequest(),
                 pruner_pb2.PrunerConfig)  # fmt: skip
    st_ = _unary(ch, "/tori.pruner.v1.SparsePruner/GetPruningStats",
                 pruner_pb2.GetPruningStatsRequest(), pruner_pb2.PruningStats)  # fmt: skip
    return (cfg.SerializeToString(deterministic=True), st_.runs_committed,
            st_.pruned_edges_total, st_.backups)  # fmt: skip


def _learner_state(ch: grpc.Channel) -> tuple[Any, ...]:
    cfg = _unary(ch, "/tori.koopman.v1.KoopmanLearner/GetConfig", koopman_pb2.GetConfigRequest(),
                 koopman_pb2.KoopmanConfig)  # fmt: skip
    k = _unary(ch, "/tori.koopman.v1.KoopmanLearner/GetKclStats", koopman_pb2.GetKclStatsRequest(),
               koopman_pb2.KclStats)  # fmt: skip
    return (cfg.SerializeToString(deterministic=True), k.model_version, k.snapshots_processed,
            k.coupling_updates, k.coupling_count)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """A service under test: how to start it and how to read its state."""

    name: str
    endpoint_key: str
    factory: ServiceFactory
    descriptor: ServiceDescriptor
    fingerprint: Callable[[grpc.Channel], tuple[Any, ...]]


def _service(module: Any, name: str) -> ServiceDescriptor:
    descriptor: ServiceDescriptor = module.DESCRIPTOR.services_by_name[name]
    return descriptor


# In start order: the scheduler reads the vault, the pruner the scheduler.
TARGETS = [
    Target("episodic_vault", "episodic_vault", VaultService,
           _service(episodic_pb2, "EpisodicVault"), _vault_state),
    Target("sleep_scheduler", "sleep_scheduler", SleepSchedulerService,
           _service(sleep_pb2, "SleepScheduler"), _scheduler_state),
    Target("sparse_pruner", "sparse_pruner", SparsePrunerService,
           _service(pruner_pb2, "SparsePruner"), _pruner_state),
    Target("koopman_learner", "koopman_learner", KoopmanLearnerService,
           _service(koopman_pb2, "KoopmanLearner"), _learner_state),
]  # fmt: skip
OVERRIDES: dict[str, Any] = {
    "vault": {"backend": "sqlite", "embedding_dim": 8},
    "koopman_learner": {"follow_vault": False},
}

METHODS = [(t, m) for t in TARGETS for m in t.descriptor.methods]


@dataclass
class Running:
    target: Target
    server: ServerThread
    channel: grpc.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.running.grpc_port}"


@dataclass
class Fleet:
    settings: Settings
    services: dict[str, Running]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The four services in one process, wired to each other as in a fleet."""
    var = Path(tmp_path_factory.mktemp("fleet"))
    settings_ = load_config(environ=service_environ(var), overrides=OVERRIDES)
    started: dict[str, Running] = {}
    try:
        for target in TARGETS:
            srv = ServerThread(target.name, target.endpoint_key, target.factory, settings_).start()
            channel = grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}")
            started[target.name] = Running(target, srv, channel)
        yield Fleet(settings_, started)
    finally:
        for run in reversed(started.values()):
            run.channel.close()
            run.server.stop()
