"""A real vault server on free ports, per test, and a client for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from mcp_services.common.config_schema import Settings
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from tests.conftest import SettingsFactory


@dataclass
class Vault:
    server: ServerThread
    stub: episodic_pb2_grpc.EpisodicVaultStub
    channel: grpc.Channel
    settings: Settings

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.running.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.running.metrics_port}/metrics"

    def count(self) -> int:
        return int(self.stub.GetStats(pb.GetStatsRequest()).episode_count)


VaultFactory = Callable[..., Vault]


@pytest.fixture
def start_vault(make_settings: SettingsFactory) -> Iterator[VaultFactory]:
    """Start a vault with the given config overrides (e.g. vault={"backend": "memory"})."""
    started: list[Vault] = []

    def factory(settings: Settings | None = None, **overrides: Any) -> Vault:
        settings = settings or make_settings(**overrides)
        server = ServerThread("episodic-vault", "episodic_vault", VaultService, settings).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.running.grpc_port}")
        vault = Vault(server, episodic_pb2_grpc.EpisodicVaultStub(channel), channel, settings)
        started.append(vault)
        return vault

    yield factory
    for v in started:
        v.channel.close()
        v.server.stop()


@pytest.fixture(params=["sqlite", "memory"])
def vault(request: pytest.FixtureRequest, start_vault: VaultFactory) -> Vault:
    return start_vault(vault={"backend": request.param, "embedding_dim": 8})


def good_episode(i: int = 0) -> pb.Episode:
    """A valid episode for a vault with embedding_dim 8; tests mutate it into bad ones."""
    return pb.Episode(
        id=f"ep-{i}",
        tags=["t"],
        source=pb.Source(type="test"),
        energy=0.5,
        activation=pb.ConceptActivation(
            concept_ids=["concept:a", "concept:b"], strengths=[0.75, 0.25], phases=[0.5, -0.5]
        ),
        payload=b"blob",
        embedding=[1.0] * 8,
        metadata={"k": "v"},
    )
