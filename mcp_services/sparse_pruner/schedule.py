"""What starts a pruning job besides an RPC: a schedule, and consolidation events.

* **Schedule**: every ``interval_s`` seconds (0: off), set in config or by SchedulePruning. A tick
  that finds a job running is skipped; the next tick tries again.
* **Consolidation**: each ``tori.memory.consolidation.completed`` event starts a job when
  ``trigger_on_consolidation`` is on. Events arriving while a job runs are coalesced into one
  follow-up job. An event is only a trigger: a missed one delays pruning until the next event,
  tick or call, since every job reads the latest graph version anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from google.protobuf.message import Message

from mcp_services.common.jobs import JobBusy
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.sparse_pruner.engine import PruningEngine
from mcp_services.sparse_pruner.knobs import RunOverrides

log = structlog.get_logger(__name__)


class Schedule:
    """Runs a job every ``interval_s`` seconds while set; owns its timer task."""

    def __init__(self, engine: PruningEngine, interval_s: float, dry_run: bool) -> None:
        self._engine = engine
        self.interval_s = 0.0
        self.dry_run = dry_run
        self.next_run_ms = 0
        self._task: asyncio.Task[None] | None = None
        self._initial = interval_s

    def start(self) -> None:
        self.set(self._initial, self.dry_run)

    def set(self, interval_s: float, dry_run: bool) -> None:
        """(Re)start the timer with ``interval_s`` (0 stops it)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.interval_s, self.dry_run = interval_s, dry_run
        self.next_run_ms = 0
        if interval_s > 0.0:
            self.next_run_ms = int((time.time() + interval_s) * 1000)
            self._task = asyncio.create_task(self._loop(), name="pruning-schedule")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.next_run_ms / 1000 - time.time(), 0.0))
            self.next_run_ms = int((time.time() + self.interval_s) * 1000)
            try:
                job = self._engine.submit("schedule", self.dry_run, RunOverrides())
            except JobBusy:
                log.info("scheduled_pruning_skipped", reason="a job is running")
                continue
            await self._engine.wait(job)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class ConsolidationTrigger:
    """Starts a job per consolidation.completed event (coalesced while one runs)."""

    def __init__(self, engine: PruningEngine) -> None:
        self._engine = engine
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
                self._follow_up = asyncio.create_task(self._after_current())
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
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_up
