"""The shared job registry (common/jobs.py): single-flight, cancellation, history, progress."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from mcp_services.common.jobs import (
    Job,
    JobBusy,
    JobFinished,
    JobNotFound,
    JobRegistry,
    JobState,
)

STEPS = 20_000


@dataclass(kw_only=True, eq=False)
class Counted(Job):
    """A job whose worker counts steps; progress is always step / STEPS."""

    step: int = 0


def finishes() -> Callable[[Counted], Coroutine[Any, Any, None]]:
    async def work(job: Counted) -> None:
        job.finish(JobState.SUCCEEDED, "done")

    return work


def held(gate: asyncio.Event) -> Callable[[Counted], Coroutine[Any, Any, None]]:
    async def work(job: Counted) -> None:
        job.start_running()
        await gate.wait()
        job.finish(JobState.SUCCEEDED, "released")

    return work


@pytest.fixture
def fine_switching() -> Iterator[None]:
    """Switch threads every microsecond, so a torn read would show up within a few updates."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


class TestSingleFlight:
    def test_second_job_for_a_key_is_refused_and_another_key_runs(self) -> None:
        """While a job holds key 'bob', starting another for 'bob' raises JobBusy naming the
        running job (which keeps running); a job for 'carol' starts; once bob's job has finished
        'bob' takes a new job."""

        async def scenario() -> None:
            reg: JobRegistry[Counted] = JobRegistry("test")
            gate = asyncio.Event()
            first = reg.start(Counted(trigger="t"), held(gate), key="bob")
            await asyncio.sleep(0)
            with pytest.raises(JobBusy, match=first.job_id) as busy:
                reg.start(Counted(trigger="t"), held(gate), key="bob")
            assert busy.value.running is first and reg.running("bob") is first
            other = reg.start(Counted(trigger="t"), held(gate), key="carol")
            assert reg.running("carol") is other
            gate.set()
            await first.wait()
            await other.wait()
            assert reg.running("bob") is None and first.state is JobState.SUCCEEDED
            again = reg.start(Counted(trigger="t"), finishes(), key="bob")
            await again.wait()
            assert again.state is JobState.SUCCEEDED and len(reg) == 3

        asyncio.run(scenario())


class TestCancellation:
    def test_cancel_reaches_the_worker_thread_and_ends_cancelled_with_the_reason(self) -> None:
        """A worker thread checking the token between steps stops at the next step after
        cancel(); the job ends CANCELLED with the first request's reason, and cancelling it again
        raises JobFinished."""
        stepped = threading.Event()

        def steps(job: Counted) -> None:
            for i in range(1, 10 * STEPS):
                job.update(step=i, progress=i / (10 * STEPS))
                stepped.set()
                job.cancel_token.check()
                time.sleep(0.0005)

        async def work(job: Counted) -> None:
            job.start_running("stepping")
            await asyncio.get_running_loop().run_in_executor(None, steps, job)
            job.finish(JobState.SUCCEEDED, "all steps")

        async def scenario() -> Counted:
            reg: JobRegistry[Counted] = JobRegistry("test")
            job = reg.start(Counted(), work)
            await asyncio.get_running_loop().run_in_executor(None, stepped.wait, 30.0)
            assert reg.cancel(job.job_id, "operator asked") is job
            assert not job.request_cancel("a later reason")
            await asyncio.wait_for(job.wait(), 60.0)
            with pytest.raises(JobFinished, match="already cancelled"):
                reg.cancel(job.job_id, "again")
            return job

        job = asyncio.run(scenario())
        assert job.state is JobState.CANCELLED
        assert job.message == "operator asked" and job.cancel_token.reason == "operator asked"
        assert 0 < job.step < 10 * STEPS - 1 and job.finished_ms >= job.created_ms

    def test_close_cancels_running_jobs_and_cancels_a_task_that_ignores_the_token(self) -> None:
        """close() asks every running job to stop; one that never reaches a cancellation point
        has its task cancelled after the wait and ends CANCELLED with the close reason."""

        async def ignores(job: Counted) -> None:
            job.start_running()
            await asyncio.Event().wait()

        async def scenario() -> Counted:
            reg: JobRegistry[Counted] = JobRegistry("test")
            job = reg.start(Counted(), ignores)
            await asyncio.sleep(0)
            await reg.close("service stopping", timeout_s=0.05)
            return job

        job = asyncio.run(scenario())
        assert job.state is JobState.CANCELLED and job.message == "service stopping"


class TestOutcome:
    def test_a_crash_or_a_missing_outcome_ends_failed(self) -> None:
        """Work that raises ends FAILED naming the error; work that returns without finishing
        the job ends FAILED saying so; the key is free afterwards."""

        async def crashes(job: Counted) -> None:
            raise RuntimeError("disk on fire")

        async def forgets(job: Counted) -> None:
            return None

        async def scenario() -> tuple[Counted, Counted, JobRegistry[Counted]]:
            reg: JobRegistry[Counted] = JobRegistry("test")
            a = reg.start(Counted(), crashes)
            await a.wait()
            b = reg.start(Counted(), forgets)
            await b.wait()
            return a, b, reg

        a, b, reg = asyncio.run(scenario())
        assert a.state is JobState.FAILED and a.message == "RuntimeError: disk on fire"
        assert b.state is JobState.FAILED and "without reporting an outcome" in b.message
        assert reg.running() is None

    def test_finish_refuses_a_state_that_is_not_final(self) -> None:
        """finish(RUNNING) is a programming error, refused with the state named."""
        with pytest.raises(ValueError, match="not running"):
            Counted().finish(JobState.RUNNING)


class TestHistory:
    def test_history_keeps_the_newest_jobs(self) -> None:
        """With history 3, after 5 finished jobs the 3 newest are found (newest first) and the
        2 oldest raise JobNotFound saying how many are remembered."""

        async def scenario() -> tuple[list[Counted], JobRegistry[Counted]]:
            reg: JobRegistry[Counted] = JobRegistry("test", history=3)
            done = []
            for _ in range(5):
                job = reg.start(Counted(), finishes())
                await job.wait()
                done.append(job)
            return done, reg

        done, reg = asyncio.run(scenario())
        assert len(reg) == 3 and reg.recent(10) == done[:1:-1]
        assert reg.get("") is done[-1] and list(reg) == done[2:]
        for old in done[:2]:
            with pytest.raises(JobNotFound, match="remembers its last 3 test jobs"):
                reg.get(old.job_id)

    def test_a_running_job_is_never_forgotten(self) -> None:
        """With history 1, a running job stays findable while newer finished jobs come and go."""

        async def scenario() -> tuple[Counted, JobRegistry[Counted]]:
            reg: JobRegistry[Counted] = JobRegistry("test", history=1)
            gate = asyncio.Event()
            long = reg.start(Counted(), held(gate), key="long")
            for _ in range(3):
                await reg.start(Counted(), finishes(), key="quick").wait()
            assert reg.get(long.job_id) is long and len(reg) == 2
            gate.set()
            await long.wait()
            await reg.start(Counted(), finishes(), key="quick").wait()
            return long, reg

        long, reg = asyncio.run(scenario())
        assert len(reg) == 1
        with pytest.raises(JobNotFound):
            reg.get(long.job_id)

    def test_history_must_be_positive(self) -> None:
        """A history of 0 is refused naming the argument."""
        with pytest.raises(ValueError, match="history must be >= 1"):
            JobRegistry("test", history=0)


class TestNotFound:
    def test_unknown_and_none_yet_raise_the_one_job_not_found(self) -> None:
        """An unknown id and an empty registry's newest both raise JobNotFound (a LookupError),
        the message naming the id or saying none has run yet."""
        reg: JobRegistry[Counted] = JobRegistry("pruning")
        with pytest.raises(JobNotFound, match="no pruning job has run yet"):
            reg.get("")
        with pytest.raises(JobNotFound, match="no job 'nope'") as exc:
            reg.get("nope")
        assert isinstance(exc.value, LookupError)
        with pytest.raises(JobNotFound):
            reg.cancel("nope", "why")


class TestProgress:
    def test_snapshots_are_consistent_while_a_worker_thread_updates(
        self, fine_switching: None
    ) -> None:
        """A thread updates step, progress and phase together STEPS times as fast as it can;
        every snapshot the reader takes meanwhile has progress == step / STEPS and the phase of
        the same step, and steps never go backwards."""
        job = Counted()
        stop = threading.Event()

        def hammer() -> None:
            for i in range(1, STEPS + 1):
                job.update(step=i, progress=i / STEPS, phase=f"step {i}")
            stop.set()

        worker = threading.Thread(target=hammer, name="hammer")
        worker.start()
        seen, last, torn = 0, 0, []
        try:
            while not stop.is_set() or seen == 0:
                s = job.snapshot()
                if s.progress != s.step / STEPS or s.phase != (
                    f"step {s.step}" if s.step else "pending"
                ):
                    torn.append((s.step, s.progress, s.phase))
                assert s.step >= last
                last, seen = s.step, seen + 1
        finally:
            worker.join(60.0)
        assert not torn, torn[:5]
        assert seen > 1 and job.snapshot().step == STEPS

    def test_update_refuses_an_unknown_figure(self) -> None:
        """update() names a figure the job does not have instead of inventing it."""
        with pytest.raises(AttributeError, match="no figure 'stpe'"):
            Counted().update(stpe=1)
