"""Background jobs: one record, one registry, one way to cancel, for every service that runs them.

A service's long operation (a consolidation, a pruning run) is a :class:`Job`: plain data, never a
protobuf message (each service maps its jobs to its own proto messages in its rpc layer). A
:class:`JobRegistry` starts jobs as tasks on the event loop, one at a time per key (single-flight,
e.g. per namespace), and remembers the last :data:`HISTORY` of them for status calls.

Errors (one hierarchy)::

    JobError
    ├── JobBusy       a job for that key is still running (``.running`` names it when known)
    ├── JobNotFound   no job with that id is remembered (or none has run yet)
    ├── JobFinished   cancelling a job that has already finished
    └── JobCancelled  raised inside a job's work when its cancel token is set

Threads: a job's numerics run on a worker thread while the event loop answers status calls.
The worker reports through :meth:`Job.update`, which changes several fields under the job's lock;
readers take :meth:`Job.snapshot` (a copy made under the same lock), so a reader never sees half
of an update (e.g. a progress from one epoch and an epoch count from the next). Cancellation is a
:class:`CancelToken`: thread-safe, set once, with the reason of the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

import structlog
from ulid import ULID

log = structlog.get_logger(__name__)

# Jobs a registry remembers for status calls (finished ones; the oldest are forgotten first).
# One figure for every service: a job record is a few hundred bytes, so 200 is a few tens of KiB.
HISTORY = 200
# How long close() waits for a cancelled job to reach its next cancellation point.
CLOSE_TIMEOUT_S = 10.0


class JobError(Exception):
    """Base of the job errors."""


class JobBusy(JobError):
    """A job for that key is still running; the message names it and what to do."""

    def __init__(self, message: str, running: Job | None = None) -> None:
        super().__init__(message)
        self.running = running


class JobNotFound(JobError, LookupError):
    """No job with that id is remembered (or none has run yet)."""


class JobFinished(JobError):
    """The job has already finished: there is nothing to cancel."""


class JobCancelled(JobError):
    """Raised inside a job's work to stop it; the message is the cancel reason."""


class JobState(enum.Enum):
    """Where a job is. A service uses the subset its proto knows (consolidation never refuses)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    REFUSED = "refused"  # the job judged its result unsafe and committed nothing
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


class CancelToken:
    """A thread-safe, set-once request to stop, with the reason of the first request."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason = ""

    def cancel(self, reason: str) -> bool:
        """Ask the job to stop; True if this call set the token (a later reason is ignored)."""
        with self._lock:
            if self._event.is_set():
                return False
            self._reason = reason or "cancelled"
            self._event.set()
            return True

    def is_set(self) -> bool:
        """True once cancelled (pass ``token.is_set`` as a ``should_stop`` callable)."""
        return self._event.is_set()

    @property
    def reason(self) -> str:
        """The first request's reason ("" while not cancelled)."""
        with self._lock:
            return self._reason

    def check(self) -> None:
        """Raise :class:`JobCancelled` (with the reason) if cancelled: a cancellation point."""
        if self._event.is_set():
            raise JobCancelled(self.reason)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(kw_only=True, eq=False)
class Job:
    """What every job has; a service's job subclasses it with its own figures.

    ``state``, ``message`` and ``finished_ms`` change only through :meth:`finish` (on the event
    loop); figures a worker thread writes go through :meth:`update`.
    """

    job_id: str = field(default_factory=lambda: str(ULID()))
    trigger: str = ""
    state: JobState = JobState.PENDING
    # The outcome in words: the error, the cancel reason, or the service's summary.
    message: str = ""
    progress: float = 0.0  # in [0, 1]
    phase: str = "pending"
    created_ms: int = field(default_factory=now_ms)
    finished_ms: int = 0
    cancel_token: CancelToken = field(default_factory=CancelToken, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def finished(self) -> bool:
        return self.state.finished

    def update(self, **figures: Any) -> None:
        """Set several fields at once, under the job's lock (safe from a worker thread)."""
        with self._lock:
            for name, value in figures.items():
                if not hasattr(self, name) or name.startswith("_"):
                    raise AttributeError(f"{type(self).__name__} has no figure {name!r}")
                setattr(self, name, value)

    def snapshot(self) -> Self:
        """A copy of the job as of one instant (taken under the lock): read this, not the job."""
        with self._lock:
            return copy.copy(self)

    def request_cancel(self, reason: str) -> bool:
        """Ask the job to stop at its next cancellation point; False if already asked."""
        return self.cancel_token.cancel(reason)

    def start_running(self, phase: str = "") -> None:
        self.update(state=JobState.RUNNING, **({"phase": phase} if phase else {}))

    def finish(self, state: JobState, message: str = "") -> None:
        """Record the outcome and wake every :meth:`wait` (call on the event loop)."""
        if not state.finished:
            raise ValueError(f"finish() takes a final state, not {state.value}")
        self.update(state=state, message=message, finished_ms=now_ms())
        self._done.set()

    async def wait(self) -> None:
        """Return once the job has finished."""
        await self._done.wait()


J = TypeVar("J", bound=Job)


class JobRegistry(Generic[J]):
    """Starts jobs (one at a time per key), remembers the last ``history``, finds and stops them.

    Args:
        what: the kind of job, in messages ("consolidation", "pruning").
        busy: the JobBusy message for a running job (names it and says what to do).
        history: jobs remembered; the oldest finished ones are forgotten first.
    """

    def __init__(
        self, what: str, busy: Callable[[J], str] | None = None, history: int = HISTORY
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1 (jobs remembered), got {history}")
        self.what = what
        self.history = history
        self._busy = busy or (lambda j: f"{what} job {j.job_id} is {j.state.value}: wait for it")
        self._jobs: OrderedDict[str, J] = OrderedDict()
        self._running: dict[str, J] = {}

    # -- starting -------------------------------------------------------------------------------

    def start(self, job: J, work: Callable[[J], Coroutine[Any, Any, None]], *, key: str = "") -> J:
        """Claim ``key`` for ``job``, remember it and run ``work(job)`` as a task.

        ``work`` ends the job with :meth:`Job.finish`. If it does not (it returns, raises, or its
        task is cancelled), the registry does: CANCELLED with the reason for
        :class:`JobCancelled` or a cancelled task, FAILED naming the error otherwise.

        Raises:
            JobBusy: a job for ``key`` is still running.
        """
        running = self.running(key)
        if running is not None:
            raise JobBusy(self._busy(running), running)
        self._running[key] = job
        self._remember(job)
        job.task = asyncio.create_task(
            self._guard(job, work, key), name=f"{self.what}-{job.job_id}"
        )
        return job

    async def _guard(
        self, job: J, work: Callable[[J], Coroutine[Any, Any, None]], key: str
    ) -> None:
        try:
            await work(job)
        except asyncio.CancelledError:
            if not job.finished:
                job.finish(JobState.CANCELLED, job.cancel_token.reason or "task cancelled")
            raise
        except JobCancelled as exc:
            if not job.finished:
                job.finish(JobState.CANCELLED, str(exc))
        except Exception as exc:  # a job reports its failure; the service keeps running
            log.exception("job_crashed", what=self.what, job_id=job.job_id)
            if not job.finished:
                job.finish(JobState.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            if not job.finished:
                job.finish(JobState.FAILED, "the job ended without reporting an outcome")
            if self._running.get(key) is job:
                del self._running[key]

    def _remember(self, job: J) -> None:
        self._jobs[job.job_id] = job
        if len(self._jobs) <= self.history:
            return
        # Forget the oldest finished jobs; a running one stays until it has finished.
        for old_id in [i for i, j in self._jobs.items() if j.finished]:
            if len(self._jobs) <= self.history:
                break
            del self._jobs[old_id]

    # -- finding --------------------------------------------------------------------------------

    def running(self, key: str = "") -> J | None:
        """The unfinished job holding ``key``, if any."""
        job = self._running.get(key)
        return job if job is not None and not job.finished else None

    def get(self, job_id: str) -> J:
        """The job ``job_id`` (empty: the newest).

        Raises:
            JobNotFound: no such job is remembered, or none has run yet.
        """
        if not job_id:
            if not self._jobs:
                raise JobNotFound(f"no {self.what} job has run yet: start one first")
            return next(reversed(self._jobs.values()))
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(
                f"no job {job_id!r}: this replica remembers its last {self.history} "
                f"{self.what} jobs"
            ) from None

    def recent(self, n: int) -> list[J]:
        """Up to ``n`` remembered jobs, newest first."""
        return list(reversed(self._jobs.values()))[:n]

    def __iter__(self) -> Iterator[J]:
        """Remembered jobs, oldest first."""
        return iter(list(self._jobs.values()))

    def __len__(self) -> int:
        return len(self._jobs)

    # -- stopping -------------------------------------------------------------------------------

    def cancel(self, job_id: str, reason: str) -> J:
        """Ask ``job_id`` to stop at its next cancellation point; returns it at once.

        Raises:
            JobNotFound: no such job.
            JobFinished: it has already finished.
        """
        job = self.get(job_id)
        if job.finished:
            raise JobFinished(f"job {job.job_id} already {job.state.value}; nothing to cancel")
        job.request_cancel(reason)
        return job

    async def stopped(self, job: J, timeout_s: float = CLOSE_TIMEOUT_S) -> J:
        """Wait up to ``timeout_s`` for ``job``'s task to end (it goes on if the wait times out)."""
        if job.task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(job.task), timeout_s)
        return job

    async def close(
        self, reason: str = "service stopping", timeout_s: float = CLOSE_TIMEOUT_S
    ) -> None:
        """Cancel every running job and wait for each; a job still running after ``timeout_s``
        has its task cancelled (it ends CANCELLED)."""
        running = [j for j in self._running.values() if not j.finished]
        for job in running:
            job.request_cancel(reason)
        for job in running:
            await self.stopped(job, timeout_s)
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task
