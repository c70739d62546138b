"""One concept graph per namespace: each namespace consolidates only its own episodes.

A namespace's **unit** is what the scheduler keeps for it: a graph store, a vault client that
reads and marks that namespace's episodes (x-tori-namespace on every call), a consolidator with
knobs of its own (auto-tuning one namespace never moves another's T0 or eta), a lease of its own,
its job list and its schedule. The default namespace's unit is the service's own (today's graph
directory, metrics, cron, pressure trigger, config reload), so a deployment with one namespace
behaves as before. Another namespace ``ns`` keeps its graph under ``<graph dir>/namespaces/<ns>/``
and is made at its first call; its cycles publish ``consolidation.completed`` naming ``ns`` (the
pruner prunes that namespace's graph after it) and its metrics are not exported (series per
tenant would be unbounded and could name tenants to every scraper).

common.namespaces.NamespaceUnits answers each RPC from the calling namespace's unit.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config_schema import Settings
from mcp_services.common.event_bus import EventBus
from mcp_services.common.namespaces import NamespaceUnits, namespace_dir
from mcp_services.common.stream_limits import StreamLimits
from mcp_services.common.tasks import Spawner
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.adapters.graph_store import GraphStore
from mcp_services.sleep_scheduler.adapters.lease import LEASE_KEY, Lease
from mcp_services.sleep_scheduler.adapters.vault_client import VaultClient
from mcp_services.sleep_scheduler.consolidator import Consolidator
from mcp_services.sleep_scheduler.metrics import SleepMetrics
from mcp_services.sleep_scheduler.ports import EpisodeSource
from mcp_services.sleep_scheduler.rpc.graph_servicer import GraphRpcs
from mcp_services.sleep_scheduler.rpc.jobs_servicer import JobRpcs
from mcp_services.sleep_scheduler.schedule import Schedule

# Each namespace holds its latest graph in memory and a vault channel.
MAX_NAMESPACES = 256
SERVICE = sleep_pb2.DESCRIPTOR.services_by_name["SleepScheduler"]


@dataclass
class SchedulerUnit:
    """What the scheduler keeps for one namespace."""

    namespace: str
    store: GraphStore
    vault: EpisodeSource
    consolidator: Consolidator
    schedule: Schedule
    servicer: Any  # the SleepSchedulerServicer over this unit's graphs and jobs

    async def start(self) -> None:
        pass  # nothing to load: its graph store opened when it was made

    async def close(self) -> None:
        await self.schedule.stop()
        await self.consolidator.close()
        await self.vault.close()


ServicerOf = Callable[[GraphRpcs, JobRpcs], Any]


def scheduler_units(
    settings: Settings,
    root: Path,
    default: SchedulerUnit,
    servicer_of: ServicerOf,
    io: Executor,
    numerics: Executor,
    streams: StreamLimits,
    bus: EventBus,
    tasks: Spawner,
) -> NamespaceUnits[SchedulerUnit]:
    """The scheduler's units: ``default`` (the service's own), the others made at first call.
    ``streams`` is the service's one set of CommitGraph bounds, shared by every unit (the cap on
    concurrent streams is per service, not per namespace); ``bus`` the service's event bus, on
    which each unit's consolidation.completed names its namespace; ``tasks`` the service's task
    group, which runs each unit's schedule."""
    cfg = settings.sleep_scheduler

    def make(namespace: str) -> SchedulerUnit:
        store = GraphStore(namespace_dir(root, namespace), cfg.keep_versions)
        vault = VaultClient.of(
            ClientFactory.of(settings),
            namespace=namespace,
            scan_timeout_s=cfg.vault_scan_timeout_s,
        )
        consolidator = Consolidator(
            store,
            vault,
            Lease(settings.redis, cfg.lease_ttl_s, f"{LEASE_KEY}:{namespace}"),
            bus,
            SleepMetrics(CollectorRegistry()),
            cfg,
            numerics,
            namespace=namespace,
        )
        schedule = Schedule(consolidator, tasks)
        servicer = servicer_of(
            GraphRpcs(store, io, streams),
            JobRpcs(consolidator, schedule),
        )
        return SchedulerUnit(namespace, store, vault, consolidator, schedule, servicer)

    return NamespaceUnits(SERVICE, default, make, MAX_NAMESPACES)
