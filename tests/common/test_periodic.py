"""Periodic: runs on its interval and at once when woken, never twice at a time, survives a
failing run (logged), and stops promptly, cancelling a run in progress. PeriodicThread, its
thread flavour: runs on its interval, survives a failing run, and stop() ends the wait."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from structlog.testing import capture_logs

from mcp_services.common.periodic import Periodic, PeriodicThread
from mcp_services.common.tasks import ServiceTasks

# Only a guard against a hang: no test asserts how long anything took.
GUARD_S = 10.0


async def until(cond: Callable[[], bool]) -> None:
    async def poll() -> None:
        # Polling: the conditions read counters the code under test keeps, with no event to await.
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), GUARD_S)


def run(body: Callable[[ServiceTasks], Awaitable[None]]) -> None:
    """Run ``body`` with an open task group, closed afterwards."""

    async def main() -> None:
        tasks = ServiceTasks("test")
        await tasks.open()
        try:
            await body(tasks)
        finally:
            assert await tasks.close(GUARD_S) == []

    asyncio.run(main())


class TestRunning:
    def test_runs_every_interval_without_a_wake(self) -> None:
        """With a short interval and no wake the callback runs again and again."""
        calls: list[int] = []

        async def tick() -> None:
            calls.append(1)

        async def body(tasks: ServiceTasks) -> None:
            p = Periodic("tick", tick, 0.01)
            p.start(tasks)
            await until(lambda: len(calls) >= 3)
            await p.stop()

        run(body)
        assert len(calls) >= 3

    def test_wake_runs_at_once_despite_a_long_interval(self) -> None:
        """An hour-long interval: only wake() can make it run during the test."""
        ran = asyncio.Event

        async def body(tasks: ServiceTasks) -> None:
            done = ran()

            async def once() -> None:
                done.set()

            p = Periodic("woken", once, 3600.0)
            p.start(tasks)
            await asyncio.sleep(0.05)
            assert not done.is_set() and p.runs == 0
            p.wake()
            await asyncio.wait_for(done.wait(), GUARD_S)
            assert p.runs == 1
            await p.stop()

        run(body)

    def test_zero_interval_runs_only_when_woken_and_a_new_interval_counts(self) -> None:
        """Interval 0 is 'no timer'; setting one cuts the current wait short and ticks."""
        calls: list[int] = []

        async def tick() -> None:
            calls.append(1)

        async def body(tasks: ServiceTasks) -> None:
            p = Periodic("idle", tick, 0.0)
            p.start(tasks)
            await asyncio.sleep(0.05)
            assert calls == []
            p.interval = 0.01
            await until(lambda: len(calls) >= 2)
            await p.stop()

        run(body)

    def test_function_interval_is_read_before_each_wait(self) -> None:
        """None from the interval function waits for a wake; a number is the wait."""
        calls: list[int] = []
        delay: list[float | None] = [None]

        async def tick() -> None:
            calls.append(1)

        async def body(tasks: ServiceTasks) -> None:
            p = Periodic("fn", tick, lambda: delay[0])
            p.start(tasks)
            await asyncio.sleep(0.05)
            assert calls == []
            delay[0] = 0.0
            p.reschedule()
            await until(lambda: len(calls) >= 2)
            await p.stop()

        run(body)


class TestOneAtATime:
    def test_wakes_during_a_run_make_one_more_run_and_never_overlap(self) -> None:
        """Ten wakes while a run is held: runs never overlap, and exactly one follows."""
        state: dict[str, Any] = {"active": 0, "most": 0, "runs": 0}

        async def body(tasks: ServiceTasks) -> None:
            release = asyncio.Event()
            entered = asyncio.Event()

            async def held() -> None:
                state["active"] += 1
                state["most"] = max(state["most"], state["active"])
                state["runs"] += 1
                entered.set()
                try:
                    await release.wait()
                finally:
                    state["active"] -= 1

            p = Periodic("held", held, 0.0)
            p.wake()
            p.start(tasks)
            await asyncio.wait_for(entered.wait(), GUARD_S)
            for _ in range(10):
                p.wake()
                await asyncio.sleep(0)
            release.set()
            await until(lambda: state["runs"] == 2 and state["active"] == 0)
            await asyncio.sleep(0.05)  # a third run would have started by now
            await p.stop()

        run(body)
        assert state["most"] == 1
        assert state["runs"] == 2


class TestFailures:
    def test_a_failing_run_is_logged_and_the_loop_goes_on(self) -> None:
        """The first run raises: logged with the task's name and the error; the next run runs."""
        calls: list[int] = []

        async def flaky() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("vault said no")

        async def body(tasks: ServiceTasks) -> None:
            p = Periodic("flaky", flaky, 0.0)
            p.wake()
            p.start(tasks)
            await until(lambda: p.failures == 1)
            p.wake()
            await until(lambda: len(calls) == 2)
            await p.stop()
            assert p.failures == 1

        with capture_logs() as logs:
            run(body)
        failed = [e for e in logs if e["event"] == "periodic_run_failed"]
        assert len(failed) == 1
        assert failed[0]["task"] == "flaky"
        assert failed[0]["error"] == "RuntimeError: vault said no"


class TestStop:
    def test_stop_cancels_a_run_in_progress_and_returns(self) -> None:
        """A run waiting on something that never happens is cancelled by stop()."""
        seen: list[str] = []

        async def body(tasks: ServiceTasks) -> None:
            entered = asyncio.Event()

            async def forever() -> None:
                entered.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    seen.append("cancelled")
                    raise

            p = Periodic("forever", forever, 0.0)
            p.wake()
            p.start(tasks)
            await asyncio.wait_for(entered.wait(), GUARD_S)
            await asyncio.wait_for(p.stop(), GUARD_S)
            assert not p.running
            assert tasks.running == []

        run(body)
        assert seen == ["cancelled"]

    def test_closing_the_task_group_stops_a_loop_nobody_stopped(self) -> None:
        """The service's task group cancels and awaits a Periodic its owner forgot to stop."""
        seen: list[str] = []

        async def main() -> None:
            tasks = ServiceTasks("test")
            await tasks.open()

            async def forever() -> None:
                try:
                    await asyncio.Event().wait()
                finally:
                    seen.append("ended")

            p = Periodic("forgotten", forever, 0.0)
            p.wake()
            p.start(tasks)
            await until(lambda: p.runs == 1)
            assert tasks.running == ["forgotten"]
            assert await tasks.close(GUARD_S) == []
            assert not p.running

        asyncio.run(main())
        assert seen == ["ended"]


class TestThreadFlavour:
    def test_runs_on_its_interval_and_survives_a_failing_run(self) -> None:
        """The first run raises (logged with the name); later runs still come."""
        calls: list[int] = []
        third = threading.Event()

        def flaky() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise OSError("disk full")
            if len(calls) == 3:
                third.set()

        p = PeriodicThread("snapshots", flaky, 0.01)
        with capture_logs() as logs:
            p.start()
            assert third.wait(GUARD_S)
            assert p.stop(GUARD_S)
        assert p.failures == 1
        failed = [e for e in logs if e["event"] == "periodic_run_failed"]
        assert [(e["task"], e["error"]) for e in failed] == [("snapshots", "OSError: disk full")]

    def test_stop_ends_a_long_wait_and_joins(self) -> None:
        """An hour-long interval: stop() returns with the thread ended and no run made."""
        calls: list[int] = []
        p = PeriodicThread("idle", lambda: calls.append(1), 3600.0)
        p.start()
        assert p.stop(GUARD_S)
        assert calls == []
