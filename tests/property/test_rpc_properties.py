"""Property tests over every RPC of every service: arbitrary requests and corrupt bytes.

For each method of each service (read from the service descriptor, so a new RPC is covered the
day it is added) hypothesis sends generated requests and mutated encodings to a real server.
The properties: the server never answers UNKNOWN, INTERNAL or DATA_LOSS (a crash or an
unhandled error); a refused request changes nothing (the service's state fingerprint is the same
before and after); and the server is still serving at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_services.common.config import load_config
from mcp_services.common.health import check
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
from tests.property.strategies import corrupted, messages

# Enough to matter, few enough for CI: every method gets this many generated requests and as
# many corrupt encodings. PROPERTY_EXAMPLES raises it for a long local run.
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "60"))
CALL_TIMEOUT_S = 10.0
STREAM_ITEMS = 50

# A crash or an unhandled exception on the server; never an acceptable answer to a request.
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


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


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Running]]:
    """The four services in one process, wired to each other as in a fleet."""
    var = Path(tmp_path_factory.mktemp("fleet"))
    settings_ = load_config(environ=service_environ(var), overrides=OVERRIDES)
    started: dict[str, Running] = {}
    try:
        for target in TARGETS:
            srv = ServerThread(target.name, target.endpoint_key, target.factory, settings_).start()
            channel = grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}")
            started[target.name] = Running(target, srv, channel)
        yield started
    finally:
        for run in reversed(started.values()):
            run.channel.close()
            run.server.stop()


def _call(channel: grpc.Channel, method: MethodDescriptor, payload: Any) -> grpc.StatusCode:
    """Send raw request bytes (a list of them for client streaming); drain streamed replies."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming and method.server_streaming:
            replies = channel.stream_stream(path)(iter(payload), timeout=CALL_TIMEOUT_S)
            for n, _ in enumerate(replies):
                if n >= STREAM_ITEMS:
                    replies.cancel()
                    return grpc.StatusCode.OK
        elif method.client_streaming:
            channel.stream_unary(path)(iter(payload), timeout=CALL_TIMEOUT_S)
        elif method.server_streaming:
            replies = channel.unary_stream(path)(payload, timeout=CALL_TIMEOUT_S)
            for n, _ in enumerate(replies):
                if n >= STREAM_ITEMS:
                    replies.cancel()
                    return grpc.StatusCode.OK
        else:
            channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def _request_class(method: MethodDescriptor) -> type[Message]:
    return GetMessageClass(method.input_type)


def _check(run: Running, method: MethodDescriptor, payload: Any) -> None:
    before = run.target.fingerprint(run.channel)
    code = _call(run.channel, method, payload)
    assert code not in FORBIDDEN, f"{method.full_name} answered {code.name}"
    if code != grpc.StatusCode.OK:
        after = run.target.fingerprint(run.channel)
        assert after == before, f"{method.full_name} refused ({code.name}) but changed state"


def _ids(param: tuple[Target, MethodDescriptor]) -> str:
    return f"{param[0].name}.{param[1].name}"


COMMON = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


@pytest.mark.parametrize("case", METHODS, ids=[_ids(c) for c in METHODS])
def test_generated_requests(
    case: tuple[Target, MethodDescriptor], servers: dict[str, Running]
) -> None:
    target, method = case
    run = servers[target.name]
    cls = _request_class(method)
    one = messages(cls).map(lambda m: m.SerializeToString())
    payloads = st.lists(one, min_size=0, max_size=4) if method.client_streaming else one

    @COMMON
    @given(payload=payloads)
    def prop(payload: Any) -> None:
        _check(run, method, payload)

    prop()
    assert check(run.address) == "SERVING"


@pytest.mark.parametrize("case", METHODS, ids=[_ids(c) for c in METHODS])
def test_corrupt_encodings(
    case: tuple[Target, MethodDescriptor], servers: dict[str, Running]
) -> None:
    target, method = case
    run = servers[target.name]
    one = corrupted(_request_class(method))
    payloads = st.lists(one, min_size=1, max_size=3) if method.client_streaming else one

    @COMMON
    @given(payload=payloads)
    def prop(payload: Any) -> None:
        _check(run, method, payload)

    prop()
    assert check(run.address) == "SERVING"
