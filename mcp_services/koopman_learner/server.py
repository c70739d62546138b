"""KoopmanLearner server:
`python -m mcp_services.koopman_learner.server` (gRPC 50054, metrics 9094).

Wiring only: each namespace's learner service (service.py) is built here and handed its
adapters (state files, metrics, events, vault follower); the servicer (rpc/servicer.py) is
registered per namespace (namespaces.py); config reloads go to the default namespace's service.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc

from mcp_services.common.clients import ClientFactory, dial_address
from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import Settings
from mcp_services.common.namespaces import DEFAULT, NamespaceUnits, add_scoped_servicer
from mcp_services.common.reload import Change
from mcp_services.common.server import Context, run
from mcp_services.gen.tori.episodic.v1 import episodic_pb2
from mcp_services.gen.tori.koopman.v1 import koopman_pb2, koopman_pb2_grpc
from mcp_services.koopman_learner.adapters.events import LearnerEvents
from mcp_services.koopman_learner.adapters.follower import VaultFollower
from mcp_services.koopman_learner.adapters.state_store import LearnerFiles
from mcp_services.koopman_learner.domain.learner import EpisodeActivity
from mcp_services.koopman_learner.metrics import KclMetrics
from mcp_services.koopman_learner.namespaces import LearnerUnit, learner_units
from mcp_services.koopman_learner.rpc import codec
from mcp_services.koopman_learner.rpc.servicer import KoopmanLearnerServicer
from mcp_services.koopman_learner.service import Follow, LearnerService

SERVICE_NAME = koopman_pb2.DESCRIPTOR.services_by_name["KoopmanLearner"].full_name


def vault_target(settings: Settings) -> str:
    """koopman_learner.vault_target, else the vault's dial address."""
    return settings.koopman_learner.vault_target or dial_address(settings, "episodic_vault")


def data_dir(settings: Settings) -> Path:
    cfg = settings.koopman_learner
    # Relative paths are relative to the project, as for every data path (resolve_path).
    return resolve_path(cfg.data_dir or Path(settings.paths.var_dir) / "data" / "koopman")


def follow_vault(ctx: Context, namespace: str, metrics: KclMetrics) -> Follow:
    """How a service follows `namespace`'s episodes in the vault, through the fleet's clients."""
    cfg = ctx.settings.koopman_learner
    clients = ClientFactory.of(ctx.settings)

    def follow(
        *,
        cursor: Callable[[], int],
        learn: Callable[[Sequence[EpisodeActivity]], Awaitable[None]],
        skip_to: Callable[[int], Awaitable[None]],
    ) -> VaultFollower:
        async def learn_episodes(episodes: Sequence[episodic_pb2.Episode]) -> None:
            await learn([codec.activity_from_episode(e) for e in episodes])

        return VaultFollower(
            vault_target(ctx.settings),
            cursor=cursor,
            learn=learn_episodes,
            skip_to=skip_to,
            bus=ctx.bus,
            poll_interval_s=cfg.poll_interval_s,
            scan_batch=cfg.scan_batch,
            connect=lambda target: clients.aio_channel(target=target),
            tasks=ctx.tasks,
            on_lag=metrics.vault_lag.set,
            namespace=namespace,
        )

    return follow


def learner_service(ctx: Context, namespace: str = DEFAULT) -> LearnerService:
    """The learner service of `namespace`, with its adapters (`ctx` is that namespace's)."""
    cfg = ctx.settings.koopman_learner
    metrics = KclMetrics(ctx.registry)
    return LearnerService(
        cfg,
        files=LearnerFiles(data_dir(ctx.settings)),
        metrics=metrics,
        events=LearnerEvents(ctx.bus),
        follow=follow_vault(ctx, namespace, metrics) if cfg.follow_vault else None,
    )


class KoopmanLearnerService:
    """The runner's service: the default namespace's learner service, and the servicer that
    answers each call with its namespace's."""

    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.service = learner_service(ctx)
        self._units: NamespaceUnits[LearnerUnit] | None = None

    async def start(self) -> None:
        await self.service.start()

    def register(self, server: grpc.aio.Server) -> None:
        default = LearnerUnit(self.service, KoopmanLearnerServicer(self.service))
        self._units = learner_units(
            self._ctx, data_dir(self._ctx.settings), default, learner_service
        )
        add_scoped_servicer(
            koopman_pb2_grpc.add_KoopmanLearnerServicer_to_server,
            self._units.servicer(),
            server,
            self._units.prepare,
        )

    async def stop(self) -> None:
        if self._units is not None:
            await self._units.close()
        await self.service.stop()

    def live_settings(self) -> dict[str, Callable[[], object]]:
        return self.service.live_settings()

    async def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        await self.service.apply_settings(settings, changes)


def main() -> None:
    sys.exit(run("koopman-learner", "koopman_learner", KoopmanLearnerService))


if __name__ == "__main__":
    main()
