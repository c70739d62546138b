"""What starts a cycle besides an explicit call: vault pressure and the recurring schedule.

* **Pressure**: every ``episode.stored`` event bumps a local count; when the count reaches the
  threshold the vault is asked for the authoritative unconsolidated count and a cycle starts if it
  is at or above ``pressure_threshold``. The vault is also polled every ``pressure_poll_s``, so a
  lost event (Redis away, the scheduler restarted) only delays a cycle.
* **Schedule**: a 5-field cron expression (UTC, via croniter) or a fixed interval. A run that
  finds a cycle already going is skipped, not queued.

A trigger that finds the lease taken logs it and waits for its next occasion. Both run as a
:class:`~mcp_services.common.periodic.Periodic` in the service's task group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from croniter import croniter  # type: ignore[import-untyped]
from google.protobuf.message import Message

from mcp_services.common.errors import InputError
from mcp_services.common.event_bus import EPISODE_STORED, EventBus
from mcp_services.common.jobs import JobBusy
from mcp_services.common.periodic import Periodic
from mcp_services.common.tasks import Spawner
from mcp_services.sleep_scheduler.adapters.lease import LeaseUnavailable
from mcp_services.sleep_scheduler.consolidator import Consolidator
from mcp_services.sleep_scheduler.ports import Selection, VaultUnavailable

log = structlog.get_logger(__name__)


async def _try_start(consolidator: Consolidator, selection: Selection, trigger: str) -> bool:
    try:
        job = await consolidator.start(selection, trigger, wait=False)
    except (JobBusy, LeaseUnavailable) as exc:
        log.info("trigger_skipped", trigger=trigger, reason=str(exc))
        return False
    log.info("trigger_started", trigger=trigger, job_id=job.job_id)
    return True


class PressureWatcher:
    """Starts a cycle when the vault holds ``threshold()`` unconsolidated episodes (0: off)."""

    def __init__(
        self,
        consolidator: Consolidator,
        threshold: Callable[[], int],
        selection: Callable[[], Selection],
        poll_s: float,
    ) -> None:
        self._c = consolidator
        self._threshold = threshold
        self._selection = selection
        self._poll_s = poll_s
        self._seen = 0
        self._watch = Periodic("pressure-watch", self._poll, poll_s)

    @property
    def poll_s(self) -> float:
        """Seconds between re-checks of the vault (0: only events)."""
        return self._poll_s

    @poll_s.setter
    def poll_s(self, value: float) -> None:
        # The wait in progress used the old interval: cut it short with a check now (what a poll
        # would do anyway), so the new interval counts from here.
        self._poll_s = value
        self._watch.interval = value
        self._watch.wake()

    def start(self, bus: EventBus, tasks: Spawner) -> None:
        bus.subscribe([EPISODE_STORED], self._on_event)
        self._watch.wake()  # look once at start: episodes may have piled up while we were down
        self._watch.start(tasks)

    async def _on_event(self, channel: str, event: Message) -> None:
        self._seen += 1
        threshold = self._threshold()
        if threshold and self._seen >= threshold:
            self._watch.wake()

    async def _poll(self) -> None:
        await self.check()

    async def check(self) -> bool:
        """Ask the vault and start a cycle if the pressure is reached; True if one started."""
        threshold = self._threshold()
        if not threshold or self._c.running is not None:
            return False
        try:
            pending = await self._c.vault.unconsolidated()
        except VaultUnavailable as exc:
            log.warning("pressure_check_failed", error=str(exc))
            return False
        self._c.metrics.unconsolidated.set(pending)
        self._seen = pending  # resynchronise the event count with the truth
        if pending < threshold:
            return False
        started = await _try_start(self._c, self._selection(), "pressure")
        if started:
            self._seen = 0
        return started

    async def stop(self) -> None:
        await self._watch.stop()


_YEAR_S = 365.0 * 24 * 3600


@dataclass(frozen=True)
class ScheduleSpec:
    """A recurring consolidation: ``cron`` (5 fields, UTC) or ``every_s`` seconds."""

    cron: str = ""
    every_s: float = 0.0
    selection: Selection = field(default_factory=Selection)

    def __post_init__(self) -> None:
        if self.cron and self.every_s:
            raise InputError("set cron or every_s, not both")
        if not (math.isfinite(self.every_s) and 0 <= self.every_s <= _YEAR_S):
            # The bound keeps the next run a valid Timestamp (found by the property tests).
            raise InputError(
                f"every_s={self.every_s} must be seconds in (0, {_YEAR_S:.0f}] (at most a year; "
                "0 with a cron expression)"
            )
        if self.cron and (len(self.cron.split()) != 5 or not croniter.is_valid(self.cron)):
            raise InputError(
                f"cron {self.cron!r} is not a 5-field cron expression: use e.g. '0 3 * * *' "
                "(minute hour day-of-month month day-of-week)"
            )

    @property
    def active(self) -> bool:
        return bool(self.cron or self.every_s)

    def next_after(self, now: float) -> float:
        """The next run time (epoch seconds) after ``now``."""
        if self.every_s:
            return now + self.every_s
        start = datetime.fromtimestamp(now, UTC)
        nxt: datetime = croniter(self.cron, start).get_next(datetime)
        return nxt.timestamp()


class Schedule:
    """Runs cycles on a :class:`ScheduleSpec`; :meth:`set` replaces it at runtime.

    Its loop is a task of ``tasks`` (the service's task group), started at the first active spec.
    """

    def __init__(self, consolidator: Consolidator, tasks: Spawner) -> None:
        self._c = consolidator
        self._tasks = tasks
        self.spec = ScheduleSpec()
        self.next_run = 0.0
        self._timer = Periodic("consolidation-schedule", self._run, self._until_next)

    def _until_next(self) -> float | None:
        return max(0.0, self.next_run - time.time()) if self.spec.active else None

    def set(self, spec: ScheduleSpec) -> None:
        self.spec = spec
        self.next_run = spec.next_after(time.time()) if spec.active else 0.0
        if spec.active:
            self._timer.start(self._tasks)
            log.info("schedule_set", cron=spec.cron, every_s=spec.every_s, next_run=self.next_run)
        else:
            log.info("schedule_cleared")
        self._timer.reschedule()

    async def _run(self) -> None:
        spec = self.spec
        try:
            await _try_start(self._c, spec.selection, "schedule")
        finally:
            # Even after a failed start, so the next run waits for its time instead of now.
            if self.spec.active:
                self.next_run = self.spec.next_after(time.time())

    async def stop(self) -> None:
        await self._timer.stop()
