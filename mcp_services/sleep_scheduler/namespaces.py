"""One concept graph per namespace: each namespace consolidates only its own episodes.

A namespace's **unit** is what the scheduler keeps for it: a graph store, a vault client that
reads and marks that namespace's episodes (x-tori-namespace on every call), a consolidator with
knobs of its own (auto-tuning one namespace never moves another's T0 or eta), a lease of its own,
its job list and its schedule. The default namespace's unit is the service's own (today's graph
directory, metrics, cron, pressure trigger, config reload, events), so a deployment with one
namespace behaves as before. Another namespace ``ns`` keeps its graph under
``<graph dir>/namespaces/<ns>/`` and is made at its first call; its cycles publish no events (the
pruner and learner serve the default namespace only) and its metrics are not exported (series per
tenant would be unbounded and could name tenants to every scraper).

:class:`NamespaceServicer` answers each RPC from the calling namespace's unit.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config_schema import Settings
from mcp_services.common.event_bus import EventBus
from mcp_services.common.namespaces import (
    DEFAULT,
    PerNamespace,
    TooManyNamespaces,
    current_namespace,
)
from mcp_services.common.stream_limits import StreamLimits
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.consolidator import Consolidator, Knobs
from mcp_services.sleep_scheduler.graph_servicer import GraphRpcs
from mcp_services.sleep_scheduler.graph_store import GraphStore
from mcp_services.sleep_scheduler.jobs_servicer import JobRpcs
from mcp_services.sleep_scheduler.lease import LEASE_KEY, Lease
from mcp_services.sleep_scheduler.metrics import SleepMetrics
from mcp_services.sleep_scheduler.triggers import Scheduler
from mcp_services.sleep_scheduler.vault_client import VaultClient

NAMESPACES_DIR = "namespaces"
# Each namespace holds its latest graph in memory and a vault channel.
MAX_NAMESPACES = 256


def namespace_graph_dir(root: Path, namespace: str) -> Path:
    """Where ``namespace`` keeps its graph versions (the default: ``root`` itself)."""
    return root if namespace == DEFAULT else root / NAMESPACES_DIR / namespace


@dataclass
class Unit:
    """What the scheduler keeps for one namespace."""

    namespace: str
    store: GraphStore
    vault: VaultClient
    consolidator: Consolidator
    scheduler: Scheduler
    servicer: Any  # the SleepSchedulerServicer over this unit's graphs and jobs

    async def close(self) -> None:
        await self.scheduler.stop()
        await self.consolidator.close()
        await self.vault.close()


ServicerOf = Callable[[GraphRpcs, JobRpcs], Any]


class NamespaceUnits:
    """The units by namespace; the default one is given, the others made at first use."""

    def __init__(
        self,
        settings: Settings,
        root: Path,
        default: Unit,
        servicer_of: ServicerOf,
        io: Executor,
        numerics: Executor,
    ) -> None:
        self._settings = settings
        self._root = root
        self._servicer_of = servicer_of
        self._io = io
        self._numerics = numerics
        self._units = PerNamespace(self._make, MAX_NAMESPACES, "scheduler")
        self._units.put(DEFAULT, default)

    def current(self) -> Unit:
        unit = self._units.get(current_namespace())
        assert unit is not None, "the namespace's unit is made before its call runs"
        return unit

    def open(self, namespace: str) -> Unit:
        """The namespace's unit, made (graph directory, vault channel) when it is new. Call it on
        the serving event loop: the vault channel belongs to it."""
        return self._units.open(namespace)

    def _make(self, namespace: str) -> Unit:
        s = self._settings
        cfg = s.sleep_scheduler
        store = GraphStore(namespace_graph_dir(self._root, namespace), cfg.keep_versions)
        vault = VaultClient.of(ClientFactory.of(s), namespace=namespace)
        quiet = EventBus(s.redis.model_copy(update={"url": ""}), "sleep-scheduler", _registry())
        consolidator = Consolidator(
            store,
            vault,
            Lease(s.redis, cfg.lease_ttl_s, f"{LEASE_KEY}:{namespace}"),
            quiet,
            SleepMetrics(_registry()),
            Knobs.of(cfg),
            self._numerics,
        )
        scheduler = Scheduler(consolidator)
        servicer = self._servicer_of(
            GraphRpcs(
                store,
                self._io,
                StreamLimits(cfg.max_concurrent_streams, cfg.max_stream_bytes, "sleep_scheduler"),
            ),
            JobRpcs(consolidator, scheduler),
        )
        return Unit(namespace, store, vault, consolidator, scheduler, servicer)

    async def close(self) -> None:
        """Close every unit but the default one (the service closes its own)."""
        for unit in self._units.take(keep=lambda ns: ns == DEFAULT):
            await unit.close()

    async def prepare(self, context: grpc.aio.ServicerContext, namespace: str) -> None:
        """Make the namespace's unit before its call runs (add_scoped_servicer's hook)."""
        if self._units.get(namespace) is not None:
            return
        try:
            self.open(namespace)
        except TooManyNamespaces as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except OSError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the graph directory of namespace {namespace!r} cannot be opened "
                f"({exc.strerror}); retry later",
            )


def _registry() -> CollectorRegistry:
    return CollectorRegistry()


def _dispatch(name: str) -> Callable[..., Any]:
    def method(self: NamespaceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # The unit's method returns its coroutine (or async generator for a stream), which the
        # scoped handler awaits (or drains) in the call's context.
        return getattr(self.units.current().servicer, name)(request, context)

    method.__name__ = name
    return method


class NamespaceServicer:
    """Every SleepScheduler RPC, answered by the calling namespace's unit."""

    def __init__(self, units: NamespaceUnits) -> None:
        self.units = units


for _method in sleep_pb2.DESCRIPTOR.services_by_name["SleepScheduler"].methods:
    setattr(NamespaceServicer, _method.name, _dispatch(_method.name))
