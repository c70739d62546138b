"""EpisodicVault server:
`python -m mcp_services.episodic_vault.server` (gRPC 50051, metrics 9091)."""

from __future__ import annotations

import asyncio
import sys

import grpc
import structlog

from mcp_services.common.clients import ClientFactory
from mcp_services.common.namespaces import (
    DEFAULT,
    ContextExecutor,
    TooManyNamespaces,
    add_scoped_servicer,
)
from mcp_services.common.server import Context, StartupError, run
from mcp_services.episodic_vault.adapters.completion import CueCompleter, completion_address
from mcp_services.episodic_vault.metrics import VaultMetrics
from mcp_services.episodic_vault.namespaces import (
    NamespaceStores,
    ScopedStore,
    open_store,
    stored_namespaces,
)
from mcp_services.episodic_vault.rpc.servicer import EpisodicVaultServicer
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc

SERVICE_NAME = episodic_pb2.DESCRIPTOR.services_by_name["EpisodicVault"].full_name
log = structlog.get_logger(__name__)


class VaultService:
    """Owns the backend and the storage threads; the runner owns the gRPC server."""

    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._cfg = ctx.settings.vault
        # Storage calls run on these threads in the calling namespace's context.
        self._executor = ContextExecutor(self._cfg.io_threads, thread_name_prefix="vault-io")
        var_dir = ctx.settings.paths.var_dir
        self._stores = NamespaceStores(self._cfg, lambda cfg: open_store(cfg, var_dir))
        self._backend: ScopedStore | None = None
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
        for namespace in (DEFAULT, *stored_namespaces(self._cfg)):
            try:
                await loop.run_in_executor(self._executor, self._stores.open, namespace)
            except Exception as exc:  # any failure to open storage stops start-up, with its reason
                await loop.run_in_executor(self._executor, self._stores.close)
                where = "" if namespace == DEFAULT else f" of namespace {namespace!r}"
                raise StartupError(
                    f"episodic-vault: cannot open the {self._cfg.backend} backend{where} or "
                    f"build its indexes: {exc}"
                ) from exc
        store = ScopedStore(self._stores, self._cfg.backend)
        self._backend = store
        self._metrics.watch_store(store)
        totals = await loop.run_in_executor(self._executor, store.totals)
        self._metrics.set_totals(totals)
        log.info("vault_opened", backend=store.name, episodes=totals[0], bytes=totals[1])
        self._completer.warm()

    async def _open_namespace(self, context: grpc.aio.ServicerContext, namespace: str) -> None:
        """Open the namespace's store before its first call runs (off the event loop)."""
        if self._stores.get(namespace) is not None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._stores.open, namespace
            )
        except TooManyNamespaces as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Exception as exc:  # the namespace's storage cannot be opened now
            log.exception("vault_namespace_open_failed", namespace=namespace)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the {self._cfg.backend} store of namespace {namespace!r} cannot be opened "
                f"({type(exc).__name__}); retry later",
            )

    def register(self, server: grpc.aio.Server) -> None:
        assert self._backend is not None, "start() first"
        add_scoped_servicer(
            episodic_pb2_grpc.add_EpisodicVaultServicer_to_server,
            EpisodicVaultServicer(
                self._cfg,
                self._backend,
                self._executor,
                self._ctx.bus,
                self._metrics,
                self._completer,
            ),
            server,
            self._open_namespace,
        )

    async def stop(self) -> None:
        await self._completer.close()
        if self._backend is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._stores.close)
            self._backend = None
        self._executor.shutdown(wait=True)


def main() -> None:
    sys.exit(run("episodic-vault", "episodic_vault", VaultService))


if __name__ == "__main__":
    main()
