"""Consolidation jobs: lease, select, cycle, commit, mark, publish, tune.

One job at a time across replicas (the Redis :class:`Lease`, taken before a job is created, so a
busy fleet answers at once). A job:

1. reads the unconsolidated episodes the selection takes from the vault;
2. runs :func:`.cycle.run_cycle` on a worker thread (the event loop stays free), reporting
   progress and temperature after every sleep epoch and stopping at the next epoch when cancelled
   or when the lease is lost;
3. commits the new graph version against the version it started from (a concurrent commit, e.g.
   the pruner's, makes it redo the cycle on the new latest version, up to twice);
4. marks the episodes consolidated in the vault (retried; if the vault stays away they stay
   unconsolidated and the next cycle takes them again, which cannot lower recall);
5. publishes ``consolidation.completed``, updates the metrics and, with ``auto_tune`` on, applies
   the tuning rules and logs each change with its reason.

A job killed with its process leaves the last committed version intact (commits are atomic) and
the lease expires within its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import structlog

from mcp_services.common import jobs
from mcp_services.common.event_bus import CONSOLIDATION_COMPLETED, EventBus, new_header
from mcp_services.common.jobs import JobBusy, JobCancelled, JobRegistry, JobState
from mcp_services.common.namespaces import DEFAULT
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.sleep_scheduler.adapters.graph_store import (
    GraphStore,
    StoredGraph,
    VersionConflict,
)
from mcp_services.sleep_scheduler.adapters.lease import Lease, LeaseUnavailable
from mcp_services.sleep_scheduler.cycle import CycleOutput, run_cycle
from mcp_services.sleep_scheduler.domain import ConsolidationConfig, CycleStats
from mcp_services.sleep_scheduler.domain.tuning import advise
from mcp_services.sleep_scheduler.metrics import SleepMetrics
from mcp_services.sleep_scheduler.ports import (
    EpisodeBatch,
    EpisodeSource,
    Selection,
    VaultUnavailable,
)
from mcp_services.sleep_scheduler.settings import SleepSchedulerConfig

log = structlog.get_logger(__name__)

COMMIT_ATTEMPTS = 3
MARK_ATTEMPTS = 4


def cycle_config(knobs: SleepSchedulerConfig, seed: int) -> ConsolidationConfig:
    """One cycle's settings from the knobs in force: the section as config, UpdateConfig, a
    reload and auto-tune left it (each replaces the consolidator's ``knobs`` whole)."""
    return ConsolidationConfig(
        t0=knobs.t0,
        eta=knobs.eta,
        t_min=min(knobs.t_min, knobs.t0),
        temperature_decay=knobs.temperature_decay,
        anneal_decay=knobs.anneal_decay,
        max_epochs=knobs.max_epochs,
        fade=knobs.fade,
        seed=seed,
    )


@dataclass(kw_only=True, eq=False)
class Job(jobs.Job):
    """A consolidation job and its figures (what GetConsolidationStatus reports).

    ``message`` is the error (or the cancel reason) of a job that did not succeed.
    """

    selection: Selection
    temperature: float = 0.0
    episodes: int = 0
    prototypes: int = 0
    epochs: int = 0
    energy_before: float = 0.0
    energy_after: float = 0.0
    energy_delta: float = 0.0
    energy_drop: float = 0.0
    settle_loops: int = 0
    stability_before: float = 0.0
    stability_after: float = 0.0
    graph_version: int = 0
    base_version: int = 0
    t0: float = 0.0
    eta: float = 0.0
    tuning: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    prototypes_faded: int = 0
    episodes_unassigned: int = 0

    def epoch_hook(self, epoch: int, max_epochs: int, temperature: float) -> None:
        """Called on the worker thread after each sleep epoch: report, then stop if cancelled."""
        # Reading and merging are the first 10%, committing and marking the last 10%.
        progress = 0.1 + 0.8 * min(1.0, epoch / max_epochs)
        self.update(epochs=epoch, temperature=temperature, progress=progress)
        self.cancel_token.check()


@dataclass
class Totals:
    cycles: int = 0
    failed: int = 0
    episodes: int = 0
    last_energy_delta: float = 0.0
    last_settle_loops: int = 0
    deltas: deque[float] = field(default_factory=lambda: deque(maxlen=8))


def _busy(job: Job) -> str:
    return (
        f"consolidation job {job.job_id} is {job.state.value}: wait for it to finish "
        "(GetConsolidationStatus) and start again"
    )


def _inactive_note(n: int) -> str:
    return (
        f"{n} selected episodes had no active concept (no strength above 0.5): nothing to "
        "learn from them; marked consolidated so they no longer count as backlog"
    )


class Consolidator:
    """Runs consolidation jobs; see module doc."""

    def __init__(
        self,
        store: GraphStore,
        vault: EpisodeSource,
        lease: Lease,
        bus: EventBus,
        metrics: SleepMetrics,
        knobs: SleepSchedulerConfig,
        executor: Executor,
        service_name: str = "sleep-scheduler",
        namespace: str = DEFAULT,
    ) -> None:
        self.store = store
        self.namespace = namespace  # named in consolidation.completed
        self.vault = vault
        self.lease = lease
        self.bus = bus
        self.metrics = metrics
        self.knobs = knobs
        self._executor = executor
        self._service = service_name
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.jobs: JobRegistry[Job] = JobRegistry("consolidation", _busy)
        self.totals = Totals()
        self.metrics.t0.set(knobs.t0)
        self.metrics.eta.set(knobs.eta)

    # -- jobs -------------------------------------------------------------------------------

    @property
    def running(self) -> Job | None:
        return self.jobs.running(self.namespace)

    async def start(self, selection: Selection, trigger: str, wait: bool) -> Job:
        """Take the lease and start a job; with ``wait`` return once it has finished.

        Raises:
            JobBusy: when a consolidation is running here or on another replica.
            LeaseUnavailable: when Redis cannot be reached to take the lease.
        """
        job = Job(trigger=trigger or "unspecified", selection=selection)
        # The lease first: it is what keeps one consolidation across replicas (the registry's
        # single-flight only sees this one), and a busy fleet answers before any job exists.
        if not await self.lease.acquire(f"{self.replica}:{job.job_id}"):
            holder = await self.lease.holder() if self.lease.distributed else None
            running = self.running
            who = f"job {running.job_id} here" if running else f"holder {holder or 'unknown'}"
            raise JobBusy(
                f"another consolidation is running ({who}): wait for it to finish "
                "(GetConsolidationStatus) and start again",
                running,
            )
        try:
            self.jobs.start(job, self._run, key=self.namespace)
        except JobBusy:
            await self.lease.release()
            raise
        if wait:
            assert job.task is not None
            # Shielded: a caller that gives up does not cancel the cycle (cancel it explicitly).
            await asyncio.shield(job.task)
        return job

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> Job:
        """Ask ``job_id`` to stop; returns it once stopped (or after 10 s, still stopping).

        Raises:
            JobNotFound: no such job is remembered.
        """
        job = self.jobs.get(job_id)
        if job.finished:
            return job
        job.request_cancel(reason)
        return await self.jobs.stopped(job)

    async def close(self) -> None:
        """Stop the running job (if any) and give the lease back."""
        await self.jobs.close("service stopping")
        await self.lease.close()

    # -- the cycle --------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        lost = asyncio.Event()
        keeper = asyncio.create_task(self.lease.keep_alive(lost), name="lease-keepalive")
        watcher = asyncio.create_task(self._watch_lease(job, lost), name="lease-watch")
        t_start = time.perf_counter()
        outcome = "failed"
        state, message = JobState.FAILED, ""
        try:
            job.start_running("reading")
            batch = await self.vault.select(job.selection)
            job.update(episodes=len(batch.ids), progress=0.05)
            if not batch.ids:
                latest = self.store.latest_version()
                if batch.inactive and latest:
                    # Nothing to learn, but marked (with the graph they were read against): else
                    # they count as backlog for ever and keep the pressure trigger firing at
                    # empty cycles. Before the first graph there is no version to mark them with.
                    await self._mark(job, batch, latest)
                    job.notes = [_inactive_note(len(batch.inactive))]
                job.update(phase="done", progress=1.0)
                state, outcome = JobState.SUCCEEDED, "empty"
                log.info("consolidation_empty", job_id=job.job_id, trigger=job.trigger)
                return
            out, stored = await self._cycle_and_commit(job, batch)
            job.update(phase="marking", progress=0.95)
            await self._mark(job, batch, stored.meta.version)
            self._finish(job, out, stored, batch)
            state, outcome = JobState.SUCCEEDED, "succeeded"
        except JobCancelled as exc:
            state, message, outcome = JobState.CANCELLED, str(exc), "cancelled"
            log.warning("consolidation_cancelled", job_id=job.job_id, reason=str(exc))
        except asyncio.CancelledError:
            # The task itself was cancelled (close() after its wait ran out).
            state, message = JobState.CANCELLED, job.cancel_token.reason or "task cancelled"
            outcome = "cancelled"
            raise
        except (VaultUnavailable, LeaseUnavailable, VersionConflict, OSError) as exc:
            state, message = JobState.FAILED, str(exc)
            log.error("consolidation_failed", job_id=job.job_id, error=str(exc))
        except Exception as exc:
            state, message = JobState.FAILED, f"{type(exc).__name__}: {exc}"
            log.exception("consolidation_crashed", job_id=job.job_id)
        finally:
            keeper.cancel()
            watcher.cancel()
            for t in (keeper, watcher):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await self.lease.release()
            if state is JobState.SUCCEEDED:
                job.phase = "done"
            self.metrics.ops.labels(outcome, job.trigger).inc()
            self.metrics.seconds.observe(time.perf_counter() - t_start)
            if outcome in ("failed", "cancelled"):
                self.totals.failed += 1
            # Last: whoever sees the job finished also sees the lease free and the figures counted.
            job.finish(state, message)

    async def _watch_lease(self, job: Job, lost: asyncio.Event) -> None:
        await lost.wait()
        job.request_cancel("the consolidation lease was lost (Redis away?)")

    async def _cycle_and_commit(
        self, job: Job, batch: EpisodeBatch
    ) -> tuple[CycleOutput, StoredGraph]:
        loop = asyncio.get_running_loop()
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            base = await loop.run_in_executor(self._executor, self.store.read, 0)
            cfg = cycle_config(self.knobs, seed=self.totals.cycles + attempt)
            job.update(base_version=base.meta.version, t0=cfg.t0, eta=cfg.eta, phase="sleeping")
            out = await loop.run_in_executor(
                self._executor, run_cycle, base, batch.activations, cfg, job.epoch_hook
            )
            job.cancel_token.check()
            job.update(phase="committing", progress=0.9)
            try:
                stored = await loop.run_in_executor(
                    self._executor,
                    self._commit,
                    base.meta.version,
                    out,
                    job,
                )
                return out, stored
            except VersionConflict:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                log.info("consolidation_rebase", job_id=job.job_id, attempt=attempt)
        raise AssertionError("unreachable")

    def _commit(self, base_version: int, out: CycleOutput, job: Job) -> StoredGraph:
        return self.store.commit(
            base_version,
            out.graph,
            out.prototypes,
            out.support,
            "consolidation",
            f"job {job.job_id} ({job.trigger}): {job.episodes} episodes",
            {
                "job_id": job.job_id,
                "episodes": str(job.episodes),
                "energy_delta": f"{out.stats.energy_delta:.6g}",
                "t0": f"{out.stats.t0:.6g}",
                "eta": f"{out.stats.eta:.6g}",
            },
        )

    async def _mark(self, job: Job, batch: EpisodeBatch, version: int) -> None:
        delay = 0.2
        for attempt in range(1, MARK_ATTEMPTS + 1):
            try:
                await self.vault.mark(batch.ids + batch.inactive, version)
                return
            except VaultUnavailable as exc:
                if attempt == MARK_ATTEMPTS:
                    raise VaultUnavailable(
                        f"graph version {version} is committed but the vault did not take the "
                        f"consolidated marks ({exc}); the episodes stay unconsolidated and the "
                        "next cycle takes them again"
                    ) from exc
                await asyncio.sleep(delay)
                delay *= 2

    def _finish(self, job: Job, out: CycleOutput, stored: StoredGraph, batch: EpisodeBatch) -> None:
        s = out.stats
        job.graph_version = stored.meta.version
        job.prototypes = s.prototypes
        job.epochs = s.epochs_run
        job.energy_before, job.energy_after = s.energy_before, s.energy_after
        job.energy_delta, job.energy_drop = s.energy_delta, s.energy_drop
        job.settle_loops = s.settle_loops
        job.stability_before = s.stability_before.recall
        job.stability_after = s.stability_after.recall
        job.notes = list(s.notes)
        if batch.inactive:
            job.notes.append(_inactive_note(len(batch.inactive)))
        job.prototypes_faded = s.prototypes_faded
        job.episodes_unassigned = s.episodes_unassigned
        job.progress = 1.0
        t = self.totals
        t.cycles += 1
        t.episodes += job.episodes
        t.last_energy_delta, t.last_settle_loops = s.energy_delta, s.settle_loops
        m = self.metrics
        m.energy_delta.set(s.energy_delta)
        # The tuning alerts read a cycle's figures only when it had something to learn.
        m.cycle_learned.set(1.0 if s.learned else 0.0)
        if s.learned:
            m.learned_energy_delta.set(s.energy_delta)
        m.energy_drop.set(s.energy_drop)
        m.settle_loops.set(s.settle_loops)
        m.episodes.set(job.episodes)
        m.stability.set(job.stability_after)
        m.version.set(stored.meta.version)
        m.edges.set(stored.meta.edge_count)
        m.prototypes.set(stored.prototypes.shape[0])
        self.bus.publish(
            CONSOLIDATION_COMPLETED,
            events_pb2.ConsolidationCompleted(
                header=new_header(self._service),
                job_id=job.job_id,
                graph_version=stored.meta.version,
                episodes_processed=job.episodes,
                energy_delta=s.energy_delta,
                namespace=self.namespace,
            ),
        )
        log.info(
            "consolidation_completed",
            job_id=job.job_id,
            trigger=job.trigger,
            version=stored.meta.version,
            episodes=job.episodes,
            prototypes=s.prototypes,
            epochs=s.epochs_run,
            energy_delta=s.energy_delta,
            stability_before=job.stability_before,
            stability_after=job.stability_after,
            settle_loops=s.settle_loops,
            notes=list(s.notes),
            prototypes_faded=s.prototypes_faded,
        )
        self._tune(job, s)

    def _tune(self, job: Job, s: CycleStats) -> None:
        k = self.knobs
        if s.learned:
            self.totals.deltas.append(s.energy_delta)
        advice = advise(
            k.t0,
            k.eta,
            s.energy_drop,
            s.settle_loops,
            list(self.totals.deltas),
            learned=s.learned,
            cause=s.notes[0] if s.notes else "",
        )
        job.advice = list(advice.reasons)
        if not advice.changed:
            if advice.why:
                log.info("tuning_no_advice", job_id=job.job_id, why=advice.why)
            return
        if not k.auto_tune:
            log.info("tuning_advice", reasons=list(advice.reasons), t0=advice.t0, eta=advice.eta)
            return
        for reason in advice.reasons:
            self.metrics.tuning.labels(reason.split(":", 1)[0]).inc()
        log.warning(
            "auto_tune_applied",
            reasons=list(advice.reasons),
            t0_old=k.t0,
            t0_new=advice.t0,
            eta_old=k.eta,
            eta_new=advice.eta,
            energy_drop=s.energy_drop,
            settle_loops=s.settle_loops,
        )
        self.knobs = k = k.model_copy(update={"t0": advice.t0, "eta": advice.eta})
        if "energy_delta_oscillates:halve_eta" in advice.reasons:
            self.totals.deltas.clear()  # judge the new eta on its own cycles
        job.tuning = list(advice.reasons)
        self.metrics.t0.set(k.t0)
        self.metrics.eta.set(k.eta)
