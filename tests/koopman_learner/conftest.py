"""A real KoopmanLearner server on free ports, per test, and helpers to feed it traces."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from mcp_services.common.config_schema import Settings
from mcp_services.common.server import ServerThread
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as pb
from mcp_services.gen.tori.koopman.v1 import koopman_pb2_grpc
from mcp_services.koopman_learner.server import KoopmanLearnerService
from tests.conftest import SettingsFactory
from tests.episodic_vault.conftest import start_vault  # noqa: F401  (a fixture, re-exported)


@dataclass
class Learner:
    server: ServerThread
    stub: koopman_pb2_grpc.KoopmanLearnerStub
    channel: grpc.Channel
    settings: Settings

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.running.metrics_port}/metrics"


LearnerFactory = Callable[..., Learner]


@pytest.fixture
def start_learner(make_settings: SettingsFactory) -> Iterator[LearnerFactory]:
    """Start a learner; keyword arguments override the koopman_learner section (follow_vault
    defaults to off), `settings=` passes whole settings (e.g. to restart on the same data)."""
    started: list[Learner] = []

    def factory(settings: Settings | None = None, **knobs: Any) -> Learner:
        if settings is None:
            section = {"follow_vault": False, **knobs}
            settings = make_settings(koopman_learner=section)
        server = ServerThread(
            "koopman-learner", "koopman_learner", KoopmanLearnerService, settings
        ).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.running.grpc_port}")
        learner = Learner(server, koopman_pb2_grpc.KoopmanLearnerStub(channel), channel, settings)
        started.append(learner)
        return learner

    yield factory
    for learner in started:
        learner.channel.close()
        learner.server.stop()


def stop(learner: Learner) -> None:
    learner.channel.close()
    learner.server.stop()


def trace_proto(
    values: np.ndarray, ids: Sequence[str], phases: np.ndarray | None = None
) -> pb.ActivationTrace:
    """A dense (n, T) array as an ActivationTrace listing every concept in every snapshot."""
    snapshots = []
    for t in range(values.shape[1]):
        snapshots.append(
            pb.ConceptActivation(
                concept_ids=list(ids),
                strengths=values[:, t].tolist(),
                phases=[] if phases is None else phases[:, t].tolist(),
            )
        )
    return pb.ActivationTrace(snapshots=snapshots)


def batch(
    traces: Sequence[np.ndarray], ids: Sequence[str], **fields: Any
) -> pb.ProcessActivationBatchRequest:
    return pb.ProcessActivationBatchRequest(traces=[trace_proto(t, ids) for t in traces], **fields)
