"""The background tasks of one service, owned by a task group the runner holds open.

The runner (server.py) opens a :class:`ServiceTasks` before the service starts and hands it to
the service in its Context; the service starts every background task through
:meth:`ServiceTasks.spawn` instead of starting an unowned task, so no task outlives the
service or goes unreferenced. At shutdown, after the service's own ``stop()``, the runner calls
:meth:`ServiceTasks.close`: every task still running is cancelled and awaited, up to a deadline.

The tasks live in an ``asyncio.TaskGroup``. A task that raises is logged
(``background_task_failed``, with its name and traceback) and leaves the group; it does not
cancel its siblings or stop the service, since one failed follow-up should not take the RPCs
down. Work that must survive its own failures (a periodic loop) catches them itself
(periodic.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Spawner(Protocol):
    """What starts an owned background task (:class:`ServiceTasks`)."""

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T | None]: ...


class TasksClosed(RuntimeError):
    """A task was spawned before the group opened or after it closed."""


class ServiceTasks:
    """An ``asyncio.TaskGroup`` held open in a task of its own; use on one event loop.

    ``await tasks.open()`` before the first :meth:`spawn`, ``await tasks.close(deadline_s)`` once.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self._group: asyncio.TaskGroup | None = None
        self._holder: asyncio.Task[None] | None = None
        self._release = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failures = 0

    async def open(self) -> None:
        opened = asyncio.Event()
        # The one task started outside the group: it holds the group open until close().
        self._holder = asyncio.create_task(self._hold(opened), name=f"{self.service}-tasks")
        await opened.wait()

    async def _hold(self, opened: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            opened.set()
            await self._release.wait()
        self._group = None

    @property
    def running(self) -> list[str]:
        """The names of the tasks still running, sorted."""
        return sorted(t.get_name() for t in self._tasks if not t.done())

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T | None]:
        """Start ``coro`` as a task of this service; its exception is logged, not raised.

        Raises:
            TasksClosed: the group is not open (before open(), or after close() began).
        """
        if self._group is None or self._closing:
            coro.close()  # never awaited: close it so Python does not warn about it
            raise TasksClosed(
                f"{self.service}: background tasks are not accepted now (the service is not "
                f"running); {name!r} was not started"
            )
        task = self._group.create_task(self._guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, T], name: str) -> T | None:
        try:
            return await coro
        except Exception as exc:  # logged here so the group (and the service) keep running
            self.failures += 1
            log.exception(
                "background_task_failed",
                service=self.service,
                task=name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return None

    async def close(self, deadline_s: float) -> list[str]:
        """Cancel every task still running and wait up to ``deadline_s`` for them to end.

        Returns the names of the tasks that had not ended by the deadline (logged as
        ``background_tasks_stuck``); empty when all ended. Later spawns raise TasksClosed.
        """
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        self._release.set()
        if self._holder is None:
            return []
        _, pending = await asyncio.wait({self._holder}, timeout=deadline_s)
        if not pending:
            return []
        stuck = self.running
        log.error(
            "background_tasks_stuck",
            service=self.service,
            tasks=stuck,
            deadline_s=deadline_s,
            action="they were cancelled but did not end; the process exits without them",
        )
        return stuck
