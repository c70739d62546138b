"""Work that runs on a timer or when woken, one run at a time: the one loop every service uses.

``Periodic(name, run, interval)`` calls ``await run()`` each time ``interval`` has passed since
the previous run ended, and as soon as possible after :meth:`Periodic.wake`. Runs never overlap:
wakes that arrive during a run make one more run right after it. A run that raises is logged
(``periodic_run_failed``, with the traceback) and the loop goes on to its next interval or wake.
:meth:`Periodic.stop` (or cancelling the service's task group) cancels the loop, and a run in
progress, at its next await, and returns once it has ended.

``interval`` is either a number of seconds (0 or less: no timer, runs only when woken) or a
function read before each wait, returning the seconds until the next run (None: only when woken);
the function form serves schedules whose next run is a time of day (cron) or that back off.
:meth:`Periodic.reschedule` makes the loop read it again now, after its inputs changed.

:class:`PeriodicThread` is the thread flavour, for loops that must stay threads because the code
they run is synchronous and has no event loop (the vault store's index flush and tier
maintenance, the memory backend's snapshots): the same contract without wake(), and stop() waits
for a run in progress to finish, since a thread cannot be cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import structlog

from mcp_services.common.tasks import Spawner

log = structlog.get_logger(__name__)

Interval = float | Callable[[], float | None]


class Periodic:
    """Runs ``run`` every ``interval`` and when woken; start it with a service's task group."""

    def __init__(self, name: str, run: Callable[[], Awaitable[None]], interval: Interval) -> None:
        self.name = name
        self._run = run
        self._interval = interval
        self._changed = asyncio.Event()
        self._run_now = False
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        self.failures = 0

    @property
    def interval(self) -> Interval:
        return self._interval

    @interval.setter
    def interval(self, value: Interval) -> None:
        """A new interval counts from now (the wait in progress is cut short, without a run)."""
        self._interval = value
        self.reschedule()

    def _delay(self) -> float | None:
        if callable(self._interval):
            delay = self._interval()
            return None if delay is None else max(delay, 0.0)
        return self._interval if self._interval > 0 else None

    def wake(self) -> None:
        """Run as soon as no run is in progress (before start(): right at start)."""
        self._run_now = True
        self._changed.set()

    def reschedule(self) -> None:
        """Read the interval again now, without running."""
        self._changed.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, tasks: Spawner) -> None:
        """Start the loop as a task of ``tasks`` (a no-op while it runs)."""
        if not self.running:
            self._task = tasks.spawn(self._loop(), name=self.name)

    async def _loop(self) -> None:
        while True:
            self._changed.clear()
            if not self._run_now:
                try:
                    async with asyncio.timeout(self._delay()):
                        await self._changed.wait()
                except TimeoutError:
                    self._run_now = True  # the interval has passed
                if not self._run_now:
                    continue  # rescheduled: wait again with the new interval
            self._run_now = False
            await self._run_once()

    async def _run_once(self) -> None:
        self.runs += 1
        try:
            await self._run()
        except Exception as exc:  # logged; the next interval or wake runs it again
            self.failures += 1
            _log_failure(self.name, exc, "runs again at its next interval or wake")

    async def stop(self) -> None:
        """Cancel the loop (and a run in progress) and wait until it has ended."""
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task():
            if task is not None:
                task.cancel()
            return
        task.cancel()
        # wait(), not `await task`: a cancellation of the caller itself still propagates.
        await asyncio.wait({task})


def _log_failure(name: str, exc: Exception, action: str) -> None:
    log.exception(
        "periodic_run_failed", task=name, error=f"{type(exc).__name__}: {exc}", action=action
    )


class PeriodicThread:
    """Runs ``run()`` in a daemon thread every ``interval`` seconds (a number, or a function read
    before each wait) after the previous run ended; one thread, so runs never overlap."""

    def __init__(
        self, name: str, run: Callable[[], None], interval: float | Callable[[], float]
    ) -> None:
        self.name = name
        self._run = run
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.failures = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _delay(self) -> float:
        return self._interval() if callable(self._interval) else self._interval

    def _loop(self) -> None:
        while not self._stopping.wait(self._delay()):
            self.runs += 1
            try:
                self._run()
            except Exception as exc:  # logged; the next interval runs it again
                self.failures += 1
                _log_failure(self.name, exc, "runs again at its next interval")

    def stop(self, timeout: float | None = None) -> bool:
        """End the wait at once and join the thread (after a run in progress); True once it
        has ended, False if ``timeout`` passed first."""
        self._stopping.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()
