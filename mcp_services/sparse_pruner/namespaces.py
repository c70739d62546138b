"""Pruning per namespace: each namespace's graph is pruned, backed up and rolled back alone.

A namespace's **unit** is a scheduler client that reads and commits that namespace's graph only
(x-tori-namespace on every call), a pruning engine with knobs of its own, its backups under
``<backup dir>/namespaces/<ns>/``, its jobs and its schedule. The default namespace's unit is the
service's own (today's backup directory, metrics, schedule, config reload), so one namespace
behaves as before. Another namespace's unit is made at its first call or at the first
consolidation.completed event naming it; it prunes when asked (memory.prune, TriggerPruning,
SchedulePruning) and after each consolidation of its namespace (:class:`ConsolidationRouter`),
publishes no events and exports no metrics (series per tenant would be unbounded and would name
tenants).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config_schema import Settings
from mcp_services.common.namespaces import (
    DEFAULT,
    InvalidNamespace,
    NamespaceUnits,
    TooManyNamespaces,
    check_namespace,
    namespace_dir,
    quiet_bus,
)
from mcp_services.common.tasks import Spawner
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.gen.tori.pruner.v1 import pruner_pb2
from mcp_services.sparse_pruner.adapters.backups import BackupStore
from mcp_services.sparse_pruner.adapters.scheduler_client import SchedulerClient
from mcp_services.sparse_pruner.domain.ports import GraphSource
from mcp_services.sparse_pruner.engine import PruningEngine
from mcp_services.sparse_pruner.metrics import PrunerMetrics
from mcp_services.sparse_pruner.rpc.servicer import SparsePrunerServicer
from mcp_services.sparse_pruner.schedule import ConsolidationTrigger, Schedule

log = structlog.get_logger(__name__)

MAX_NAMESPACES = 256
SERVICE = pruner_pb2.DESCRIPTOR.services_by_name["SparsePruner"]


@dataclass
class PrunerUnit:
    """What the pruner keeps for one namespace."""

    client: GraphSource
    engine: PruningEngine
    schedule: Schedule
    servicer: SparsePrunerServicer
    trigger: ConsolidationTrigger

    async def start(self) -> None:
        pass  # nothing to load: its stores opened when it was made

    async def close(self) -> None:
        await self.trigger.stop()
        await self.schedule.stop()
        await self.engine.close()
        await self.client.close()


def pruner_unit(settings: Settings, backups: Path, namespace: str, tasks: Spawner) -> PrunerUnit:
    """A unit for ``namespace`` (its schedule not started: it prunes when asked); its schedule
    and follow-ups run in ``tasks``, the service's task group."""
    cfg = settings.sparse_pruner
    client = SchedulerClient.of(ClientFactory.of(settings), cfg.scheduler_timeout_s, namespace)
    engine = PruningEngine(
        cfg,
        client,
        BackupStore(namespace_dir(backups, namespace), cfg.backup_retention),
        PrunerMetrics(CollectorRegistry()),
        quiet_bus(settings, "sparse-pruner"),
        growth_min_window_s=cfg.growth_min_window_s,
        auto_tune_cooldown_s=cfg.auto_tune_cooldown_s,
    )
    schedule = Schedule(engine, 0.0, cfg.schedule_dry_run, tasks)
    servicer = SparsePrunerServicer(engine, schedule)
    return PrunerUnit(client, engine, schedule, servicer, ConsolidationTrigger(engine, tasks))


def pruner_units(
    settings: Settings, backups: Path, default: PrunerUnit, tasks: Spawner
) -> NamespaceUnits[PrunerUnit]:
    """The pruner's units: ``default`` (the service's own), the others made at first call."""
    return NamespaceUnits(
        SERVICE, default, lambda ns: pruner_unit(settings, backups, ns, tasks), MAX_NAMESPACES
    )


class ConsolidationRouter:
    """Hands each consolidation.completed event to the trigger of the namespace it names (none:
    the default, as a scheduler before namespaces sends), so a consolidation prunes that
    namespace's graph only. An event naming no valid namespace, or one beyond the pruner's
    namespace limit, is logged and dropped: an event is a trigger, never the source of truth."""

    def __init__(self, units: NamespaceUnits[PrunerUnit]) -> None:
        self._units = units

    async def on_event(self, channel: str, event: Message) -> None:
        if not isinstance(event, events_pb2.ConsolidationCompleted):
            return
        try:
            namespace = check_namespace(event.namespace or DEFAULT, "consolidation event")
            unit = self._units.open(namespace)
        except (InvalidNamespace, TooManyNamespaces) as exc:
            log.warning("consolidation_event_dropped", job=event.job_id, reason=str(exc))
            return
        await unit.trigger.on_event(channel, event)
