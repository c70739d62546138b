"""Pruning per namespace: each namespace's graph is pruned, backed up and rolled back alone.

A namespace's **unit** is a scheduler client that reads and commits that namespace's graph only
(x-tori-namespace on every call), a pruning engine with knobs of its own, its backups under
``<backup dir>/namespaces/<ns>/``, its jobs and its schedule. The default namespace's unit is the
service's own (today's backup directory, metrics, schedule, the prune after each consolidation,
config reload), so one namespace behaves as before. Another namespace's unit is made at its first
call; it prunes when asked (memory.prune, TriggerPruning, SchedulePruning), publishes no events
and exports no metrics (series per tenant would be unbounded and would name tenants).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config_schema import Settings
from mcp_services.common.namespaces import NamespaceUnits, namespace_dir, quiet_bus
from mcp_services.gen.tori.pruner.v1 import pruner_pb2
from mcp_services.sparse_pruner.backups import BackupStore
from mcp_services.sparse_pruner.engine import PruningEngine
from mcp_services.sparse_pruner.knobs import Knobs
from mcp_services.sparse_pruner.metrics import PrunerMetrics
from mcp_services.sparse_pruner.schedule import Schedule
from mcp_services.sparse_pruner.scheduler_client import SchedulerClient
from mcp_services.sparse_pruner.servicer import SparsePrunerServicer

MAX_NAMESPACES = 256
SERVICE = pruner_pb2.DESCRIPTOR.services_by_name["SparsePruner"]


@dataclass
class PrunerUnit:
    """What the pruner keeps for one namespace."""

    client: SchedulerClient
    engine: PruningEngine
    schedule: Schedule
    servicer: SparsePrunerServicer

    async def start(self) -> None:
        pass  # nothing to load: its stores opened when it was made

    async def close(self) -> None:
        await self.schedule.stop()
        await self.engine.close()
        await self.client.close()


def pruner_unit(settings: Settings, backups: Path, namespace: str) -> PrunerUnit:
    """A unit for ``namespace`` (its schedule not started: it prunes when asked)."""
    cfg = settings.sparse_pruner
    client = SchedulerClient.of(ClientFactory.of(settings), cfg.scheduler_timeout_s, namespace)
    engine = PruningEngine(
        Knobs.from_config(cfg),
        client,
        BackupStore(namespace_dir(backups, namespace), cfg.backup_retention),
        PrunerMetrics(CollectorRegistry()),
        quiet_bus(settings, "sparse-pruner"),
        growth_min_window_s=cfg.growth_min_window_s,
        auto_tune_cooldown_s=cfg.auto_tune_cooldown_s,
    )
    schedule = Schedule(engine, 0.0, cfg.schedule_dry_run)
    return PrunerUnit(client, engine, schedule, SparsePrunerServicer(engine, schedule))


def pruner_units(
    settings: Settings, backups: Path, default: PrunerUnit
) -> NamespaceUnits[PrunerUnit]:
    """The pruner's units: ``default`` (the service's own), the others made at first call."""
    return NamespaceUnits(
        SERVICE, default, lambda ns: pruner_unit(settings, backups, ns), MAX_NAMESPACES
    )
