"""EpisodicVault server:
`python -m mcp_services.episodic_vault.server` (gRPC 50051, metrics 9091)."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import structlog

from mcp_services.common.clients import ClientFactory
from mcp_services.common.server import Context, StartupError, run
from mcp_services.episodic_vault.backends import open_backend
from mcp_services.episodic_vault.completion import CueCompleter, completion_address
from mcp_services.episodic_vault.metrics import VaultMetrics
from mcp_services.episodic_vault.servicer import EpisodicVaultServicer
from mcp_services.episodic_vault.store import TieredStore, index_dir, store_identity
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc

SERVICE_NAME = episodic_pb2.DESCRIPTOR.services_by_name["EpisodicVault"].full_name
log = structlog.get_logger(__name__)


class VaultService:
    """Owns the backend and the storage threads; the runner owns the gRPC server."""

    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._cfg = ctx.settings.vault
        self._executor = ThreadPoolExecutor(self._cfg.io_threads, thread_name_prefix="vault-io")
        self._backend: TieredStore | None = None
        self._metrics = VaultMetrics(ctx.registry, self._cfg.backend)
        clients = ClientFactory.of(ctx.settings)
        self._completer = CueCompleter(
            completion_address(ctx.settings),
            self._cfg.recall.completion_timeout_ms,
            # No channel retries: Recall waits at most completion_timeout_ms, then ranks by the cue.
            lambda address: clients.aio_channel(target=address, retries=False),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            backend = await loop.run_in_executor(self._executor, open_backend, self._cfg)
        except Exception as exc:  # any failure to open storage stops start-up, with its reason
            raise StartupError(
                f"episodic-vault: cannot open the {self._cfg.backend} backend: {exc}"
            ) from exc
        store = TieredStore(
            self._cfg,
            backend,
            index_dir(self._cfg, self._ctx.settings.paths.var_dir),
            store_identity(self._cfg),
        )
        try:
            await loop.run_in_executor(self._executor, store.open)
        except Exception as exc:  # the catalog and index are built from the backend at start
            await loop.run_in_executor(self._executor, backend.close)
            raise StartupError(f"episodic-vault: cannot build the vault's indexes: {exc}") from exc
        self._backend = store
        self._metrics.watch_store(store)
        totals = await loop.run_in_executor(self._executor, store.totals)
        self._metrics.set_totals(totals)
        log.info("vault_opened", backend=self._backend.name, episodes=totals[0], bytes=totals[1])
        self._completer.warm()

    def register(self, server: grpc.aio.Server) -> None:
        assert self._backend is not None, "start() first"
        episodic_pb2_grpc.add_EpisodicVaultServicer_to_server(
            EpisodicVaultServicer(
                self._cfg,
                self._backend,
                self._executor,
                self._ctx.bus,
                self._metrics,
                self._completer,
            ),
            server,
        )

    async def stop(self) -> None:
        await self._completer.close()
        if self._backend is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._backend.close)
            self._backend = None
        self._executor.shutdown(wait=True)


def main() -> None:
    sys.exit(run("episodic-vault", "episodic_vault", VaultService))


if __name__ == "__main__":
    main()
