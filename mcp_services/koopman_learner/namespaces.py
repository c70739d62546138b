"""One learner per namespace: each namespace's dynamics are learnt from its own episodes only.

A namespace's **unit** is a learner service of its own (state, named streams, follower of that
namespace's episodes) whose data lives under ``<data dir>/namespaces/<ns>/``. The default
namespace's unit is the service itself (today's data directory, metrics, events, config reload),
so one namespace behaves as before. Another namespace's unit is made, and its state loaded, at its
first call; it publishes no events and exports no metrics (series per tenant would be unbounded
and would name tenants), and a config reload does not reach it (it keeps the knobs it started
with until UpdateConfig changes them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from mcp_services.common.namespaces import NamespaceUnits, namespace_dir, quiet_bus
from mcp_services.common.server import Context
from mcp_services.gen.tori.koopman.v1 import koopman_pb2
from mcp_services.koopman_learner.rpc.servicer import KoopmanLearnerServicer
from mcp_services.koopman_learner.service import LearnerService

MAX_NAMESPACES = 64  # each holds a model and its numerics thread
SERVICE = koopman_pb2.DESCRIPTOR.services_by_name["KoopmanLearner"]


@dataclass
class LearnerUnit:
    """What the learner keeps for one namespace: its service and the servicer that serves it."""

    service: LearnerService
    servicer: KoopmanLearnerServicer

    async def start(self) -> None:
        await self.service.start()

    async def close(self) -> None:
        await self.service.stop()


def learner_units(
    ctx: Context,
    root: Path,
    default: LearnerUnit,
    build: Callable[[Context, str], LearnerService],
) -> NamespaceUnits[LearnerUnit]:
    """The learner's units: ``default`` (the service itself), the others made at first call by
    ``build(context, namespace)`` with a context of their own (see the module docstring)."""

    def make(namespace: str) -> LearnerUnit:
        cfg = ctx.settings.koopman_learner
        own = cfg.model_copy(update={"data_dir": str(namespace_dir(root, namespace))})
        settings = ctx.settings.model_copy(update={"koopman_learner": own})
        quiet = Context(
            settings, CollectorRegistry(), quiet_bus(ctx.settings, "koopman-learner"), ctx.tasks
        )
        service = build(quiet, namespace)
        return LearnerUnit(service, KoopmanLearnerServicer(service))

    return NamespaceUnits(SERVICE, default, make, MAX_NAMESPACES)
