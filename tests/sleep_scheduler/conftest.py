"""A real SleepScheduler server on free ports, per test, and a client for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import scipy.sparse as sp

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config_schema import Settings
from mcp_services.common.server import Context, ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2_grpc
from mcp_services.sleep_scheduler.adapters.vault_client import VaultClient
from mcp_services.sleep_scheduler.ports import EpisodeSource
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from tests.conftest import SettingsFactory


@dataclass
class Scheduler:
    server: ServerThread
    stub: sleep_pb2_grpc.SleepSchedulerStub
    channel: grpc.Channel
    settings: Settings
    service: SleepSchedulerService  # the instance the server runs (its consolidator's jobs)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.running.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.running.metrics_port}/metrics"


SchedulerFactory = Callable[..., Scheduler]


@pytest.fixture
def start_scheduler(make_settings: SettingsFactory) -> Iterator[SchedulerFactory]:
    """Start a scheduler with the given config overrides (e.g. sleep_scheduler={...}).

    ``wrap_vault``, if given, is applied to the scheduler's real vault client (e.g. HeldSelect,
    to hold a cycle's read of the vault while the test acts)."""
    started: list[Scheduler] = []

    def factory(
        settings: Settings | None = None,
        wrap_vault: Callable[[EpisodeSource], EpisodeSource] | None = None,
        **overrides: Any,
    ) -> Scheduler:
        settings = settings or make_settings(**overrides)
        made: list[SleepSchedulerService] = []

        def service(ctx: Context) -> SleepSchedulerService:
            vault = None
            if wrap_vault is not None:
                cfg = ctx.settings.sleep_scheduler
                real = VaultClient.of(
                    ClientFactory.of(ctx.settings), scan_timeout_s=cfg.vault_scan_timeout_s
                )
                vault = wrap_vault(real)
            made.append(SleepSchedulerService(ctx, vault))
            return made[0]

        server = ServerThread("sleep-scheduler", "sleep_scheduler", service, settings).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.running.grpc_port}")
        sched = Scheduler(
            server, sleep_pb2_grpc.SleepSchedulerStub(channel), channel, settings, made[0]
        )
        started.append(sched)
        return sched

    yield factory
    for s in started:
        s.channel.close()
        s.server.stop()


@pytest.fixture
def scheduler(start_scheduler: SchedulerFactory) -> Scheduler:
    return start_scheduler()


@dataclass
class Pair:
    """A real vault and a scheduler wired to it and to the session's private Redis."""

    vault_server: ServerThread
    vault: episodic_pb2_grpc.EpisodicVaultStub
    sched: Scheduler
    redis_url: str
    channels: list[grpc.Channel]

    def put_states(
        self,
        states: sp.csr_matrix,
        prefix: str = "concept:",
        metadata: tuple[tuple[str, str], ...] = (),
        **fields: Any,
    ) -> int:
        """Store each {0, 1} row as an episode whose activation is its active concepts (in the
        namespace `metadata` names, if any)."""
        reqs = []
        for r in range(states.shape[0]):
            cols = states.indices[states.indptr[r] : states.indptr[r + 1]]
            ids = [f"{prefix}{c}" for c in cols]
            reqs.append(
                episodic_pb2.PutEpisodeRequest(
                    episode=episodic_pb2.Episode(
                        source=episodic_pb2.Source(type="test"),
                        activation=episodic_pb2.ConceptActivation(
                            concept_ids=ids, strengths=[1.0] * len(ids)
                        ),
                        **fields,
                    )
                )
            )
        resp = self.vault.PutEpisodes(iter(reqs), metadata=metadata)
        return int(resp.created)

    def unconsolidated(self) -> int:
        return int(self.vault.GetStats(episodic_pb2.GetStatsRequest()).unconsolidated_count)


PairFactory = Callable[..., Pair]


@pytest.fixture
def start_pair(
    make_settings: SettingsFactory, start_scheduler: SchedulerFactory, redis_url: str
) -> Iterator[PairFactory]:
    """Start a memory-backed vault and a scheduler pointing at it; overrides go to the scheduler."""
    started: list[Pair] = []

    def factory(
        wrap_vault: Callable[[EpisodeSource], EpisodeSource] | None = None, **sleep_overrides: Any
    ) -> Pair:
        vault_settings = make_settings(
            environ={"REDIS_URL": redis_url}, vault={"backend": "memory", "embedding_dim": 8}
        )
        vault_server = ServerThread(
            "episodic-vault", "episodic_vault", VaultService, vault_settings
        ).start()
        overrides = {"pressure_threshold": 0, "lease_ttl_s": 5, **sleep_overrides}
        sched_settings = make_settings(
            environ={
                "REDIS_URL": redis_url,
                "VAULT_GRPC_PORT": str(vault_server.running.grpc_port),
            },
            sleep_scheduler=overrides,
        )
        sched = start_scheduler(settings=sched_settings, wrap_vault=wrap_vault)
        channel = grpc.insecure_channel(f"127.0.0.1:{vault_server.running.grpc_port}")
        pair = Pair(
            vault_server,
            episodic_pb2_grpc.EpisodicVaultStub(channel),
            sched,
            redis_url,
            [channel],
        )
        started.append(pair)
        return pair

    yield factory
    for p in started:
        for c in p.channels:
            c.close()
        p.sched.channel.close()
        p.sched.server.stop()
        p.vault_server.stop()
