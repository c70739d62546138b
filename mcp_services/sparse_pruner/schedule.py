"""What starts a pruning job besides an RPC: a schedule, and consolidation events.

* **Schedule**: every ``interval_s`` seconds (0: off), set in config or by SchedulePruning. A tick
  that finds a job running is skipped; the next tick tries again.
* **Consolidation**: each ``tori.memory.consolidation.completed`` event starts a job when
  ``trigger_on_consolidation`` is on. Events arriving while a job runs are coalesced into one
  follow-up job. An event is only a trigger: a missed one delays pruning until the next event,
  tick or call, since every job reads the latest graph version anyway.

Both run their waits as tasks of the service's task group (common/tasks.py).
"""

from __future__ import annotations

import asyncio
import time

import structlog
from google.protobuf.message import Message

from mcp_services.common.jobs import JobBusy
from mcp_services.common.periodic import Periodic
from mcp_services.common.tasks import Spawner
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.sparse_pruner.domain.knobs import RunOverrides
from mcp_services.sparse_pruner.engine import PruningEngine

log = structlog.get_logger(__name__)


class Schedule:
    """Runs a job every ``interval_s`` seconds while set; its timer is a task of ``tasks``."""

    def __init__(
        self, engine: PruningEngine, interval_s: float, dry_run: bool, tasks: Spawner
    ) -> None:
        self._engine = engine
        self._tasks = tasks
        self.interval_s = 0.0
        self.dry_run = dry_run
        self.next_run_ms = 0
        self._initial = interval_s
        self._timer = Periodic("pruning-schedule", self._run, self._until_next)

    def start(self) -> None:
        self.set(self._initial, self.dry_run)

    def _until_next(self) -> float | None:
        if not self.interval_s:
            return None
        return max(self.next_run_ms / 1000 - time.time(), 0.0)

    def set(self, interval_s: float, dry_run: bool) -> None:
        """(Re)start the timer with ``interval_s`` (0 stops it)."""
        self.interval_s, self.dry_run = interval_s, dry_run
        self.next_run_ms = 0
        if interval_s > 0.0:
            self.next_run_ms = int((time.time() + interval_s) * 1000)
            self._timer.start(self._tasks)
        self._timer.reschedule()

    async def _run(self) -> None:
        self.next_run_ms = int((time.time() + self.interval_s) * 1000)
        try:
            job = self._engine.submit("schedule", self.dry_run, RunOverrides())
        except JobBusy:
            log.info("scheduled_pruning_skipped", reason="a job is running")
            return
        await self._engine.wait(job)

    async def stop(self) -> None:
        await self._timer.stop()


class ConsolidationTrigger:
    """Starts a job per consolidation.completed event (coalesced while one runs)."""

    def __init__(self, engine: PruningEngine, tasks: Spawner) -> None:
        self._engine = engine
        self._tasks = tasks
        self._pending = False
        self._follow_up: asyncio.Task[None] | None = None
        self.events_seen = 0

    async def on_event(self, channel: str, event: Message) -> None:
        if not isinstance(event, events_pb2.ConsolidationCompleted):
            return
        self.events_seen += 1
        if not self._engine.knobs.trigger_on_consolidation:
            return
        log.info("consolidation_event", graph_version=event.graph_version, job=event.job_id)
        self._start()

    def _start(self) -> None:
        try:
            job = self._engine.submit("consolidation", False, RunOverrides(), "after consolidation")
        except JobBusy:
            # One follow-up job covers every event that arrived meanwhile.
            self._pending = True
            if self._follow_up is None or self._follow_up.done():
                self._follow_up = self._tasks.spawn(self._after_current(), name="pruning-follow-up")
            return
        del job

    async def _after_current(self) -> None:
        while (job := self._engine.active) is not None:
            await job.wait()
        if self._pending:
            self._pending = False
            self._start()

    async def stop(self) -> None:
        if self._follow_up is not None:
            self._follow_up.cancel()
            await asyncio.wait({self._follow_up})
