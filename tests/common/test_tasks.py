"""A service's task group: owned background tasks, logged failures, cancelled and awaited at
shutdown (with a deadline), and the runner closing it after the service stops."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from structlog.testing import capture_logs

from mcp_services.common.server import Context, ServerThread
from mcp_services.common.tasks import ServiceTasks, TasksClosed
from tests.conftest import SettingsFactory

GUARD_S = 10.0  # a guard against a hang, not a timing assertion


async def forever(ended: list[str], name: str) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        ended.append(name)


class TestServiceTasks:
    def test_a_failing_task_is_logged_and_its_siblings_keep_running(self) -> None:
        """One task raising neither cancels the others nor the group; it is logged by name."""
        ended: list[str] = []

        async def boom() -> None:
            raise ValueError("bad shape (3, 4)")

        async def main() -> None:
            tasks = ServiceTasks("svc")
            await tasks.open()
            sibling = tasks.spawn(forever(ended, "sibling"), name="sibling")
            failed = tasks.spawn(boom(), name="boom")
            await asyncio.wait({failed}, timeout=GUARD_S)
            await asyncio.sleep(0.01)
            assert not sibling.done()
            assert tasks.failures == 1
            assert tasks.running == ["sibling"]
            # A task started after the failure still runs: the group is intact.
            later = tasks.spawn(asyncio.sleep(0, result="ok"), name="later")
            assert await later == "ok"
            assert await tasks.close(GUARD_S) == []
            assert sibling.cancelled()

        with capture_logs() as logs:
            asyncio.run(main())
        failed = [e for e in logs if e["event"] == "background_task_failed"]
        assert [(e["service"], e["task"], e["error"]) for e in failed] == [
            ("svc", "boom", "ValueError: bad shape (3, 4)")
        ]
        assert ended == ["sibling"]

    def test_close_cancels_and_awaits_every_owned_task(self) -> None:
        """After close() every task has run its cleanup and none is left running."""
        ended: list[str] = []

        async def main() -> None:
            tasks = ServiceTasks("svc")
            await tasks.open()
            owned = [tasks.spawn(forever(ended, f"t{i}"), name=f"t{i}") for i in range(3)]
            await asyncio.sleep(0)
            assert await tasks.close(GUARD_S) == []
            assert all(t.done() for t in owned)
            assert tasks.running == []

        asyncio.run(main())
        assert sorted(ended) == ["t0", "t1", "t2"]

    def test_a_task_that_ignores_cancellation_is_named_at_the_deadline(self) -> None:
        """close() returns at its deadline naming the task still running, and logs it."""
        release = threading.Event()

        async def stubborn() -> None:
            while not release.is_set():
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    continue  # refuses to stop

        async def main() -> list[str]:
            tasks = ServiceTasks("svc")
            await tasks.open()
            task = tasks.spawn(stubborn(), name="stubborn")
            await asyncio.sleep(0)
            stuck = await tasks.close(0.05)
            release.set()
            await asyncio.wait({task}, timeout=GUARD_S)
            return stuck

        with capture_logs() as logs:
            stuck = asyncio.run(main())
        assert stuck == ["stubborn"]
        assert any(
            e["event"] == "background_tasks_stuck" and e["tasks"] == ["stubborn"] for e in logs
        )

    def test_spawn_outside_the_open_group_is_refused_naming_the_task(self) -> None:
        """Before open() and after close() a spawn raises TasksClosed; nothing runs unowned."""

        async def main() -> None:
            tasks = ServiceTasks("svc")
            with pytest.raises(TasksClosed, match="'early' was not started"):
                tasks.spawn(asyncio.sleep(0), name="early")
            await tasks.open()
            await tasks.close(GUARD_S)
            with pytest.raises(TasksClosed, match="'late' was not started"):
                tasks.spawn(asyncio.sleep(0), name="late")

        asyncio.run(main())


class BackgroundService:
    """Starts two background tasks through ctx.tasks and stops neither: one runs until
    cancelled, one raises at once."""

    service_names: tuple[str, ...] = ()
    last: BackgroundService

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.ended = threading.Event()
        self.failed = threading.Event()
        BackgroundService.last = self

    def register(self, server: grpc.aio.Server) -> None:
        return None

    async def _forever(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self.ended.set()

    async def _boom(self) -> None:
        self.failed.set()
        raise RuntimeError("follower lost its cursor")

    async def start(self) -> None:
        self._ctx.tasks.spawn(self._forever(), name="forever")
        self._ctx.tasks.spawn(self._boom(), name="boom")

    async def stop(self) -> None:
        return None  # deliberately leaves its tasks to the runner


class TestRunner:
    def test_shutdown_cancels_the_service_tasks_it_left_running(
        self, make_settings: SettingsFactory
    ) -> None:
        """A failed background task is logged and the service keeps serving; at stop the
        runner cancels and awaits the task the service left running."""
        with capture_logs() as logs:
            srv = ServerThread("bg", "sleep_scheduler", BackgroundService, make_settings()).start()
            svc = BackgroundService.last
            assert svc.failed.wait(GUARD_S)
            assert not svc.ended.is_set()
            channel = grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}")
            grpc.channel_ready_future(channel).result(timeout=GUARD_S)  # still serving
            channel.close()
            srv.stop()
        assert svc.ended.is_set()
        assert [e["task"] for e in logs if e["event"] == "background_task_failed"] == ["boom"]
        assert not [e for e in logs if e["event"] == "background_tasks_stuck"]
