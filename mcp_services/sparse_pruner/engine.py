"""The pruning engine: runs jobs against the SleepScheduler, keeps backups, applies the tuning rule.

One job runs at a time (the numerics use a single worker thread). A job:

1. reads the latest graph version through the scheduler's API;
2. (auto_tune) applies the weekly-growth rule to tau, at most once per cooldown;
3. computes the guarded plan off the event loop (cancellable between solver rounds);
4. unless a dry run or refused: saves a backup of the version read, then commits the pruned graph
   with ``base_version`` = that version. On FAILED_PRECONDITION (someone committed meanwhile) it
   discards the backup, re-reads and recomputes, up to ``max_conflict_retries`` times;
5. publishes ``tori.memory.graph.pruned`` and updates the metrics.

A job never commits without a backup on disk first, and a cancelled job commits nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import scipy.sparse as sp
import structlog

from mcp_services.common.event_bus import GRAPH_PRUNED, EventBus, new_header
from mcp_services.common.jobs import JobRegistry, JobState
from mcp_services.gen.tori.events.v1 import events_pb2
from mcp_services.sparse_pruner.adapters.backups import BackupInfo, BackupStore
from mcp_services.sparse_pruner.domain import SolveCancelled, tuned_tau, weekly_growth
from mcp_services.sparse_pruner.domain.jobs import (
    Computation,
    Job,
    compute,
    plan_reason,
    record,
    summary,
)
from mcp_services.sparse_pruner.domain.knobs import (
    RunOverrides,
    operator_tau,
    relative_tau,
    run_settings,
    with_knobs,
)
from mcp_services.sparse_pruner.domain.ports import GraphSource, VersionConflict
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot
from mcp_services.sparse_pruner.metrics import PrunerMetrics
from mcp_services.sparse_pruner.settings import SparsePrunerConfig

log = structlog.get_logger(__name__)
T = TypeVar("T")

SERVICE = "sparse-pruner"
# How a job came to run, for messages about it (by Job.trigger).
STARTED_BY = {
    "consolidation": "started automatically after the last consolidation",
    "schedule": "started by the pruning schedule",
    "rpc": "started by a TriggerPruning call",
    "cli": "started from the command line",
}
_WEEK_MS = 7 * 86_400_000


class RollbackImpossible(Exception):
    """The backup cannot be restored onto the current graph; the message says why."""


@dataclass(frozen=True)
class Growth:
    """Weekly edge growth over the retained versions and what the tuning rule proposes."""

    weekly: float  # NaN when the versions span less than the minimum window
    proposed_tau: float


class PruningEngine:
    """Owns jobs, backups and knobs; reads and commits the graph through ``client`` (the
    scheduler's gRPC client in the service, an in-memory fake in tests)."""

    def __init__(
        self,
        knobs: SparsePrunerConfig,
        client: GraphSource,
        backups: BackupStore,
        metrics: PrunerMetrics,
        bus: EventBus,
        *,
        growth_min_window_s: float,
        auto_tune_cooldown_s: float,
    ) -> None:
        self.knobs = knobs
        self.client = client
        self.backups = backups
        self.metrics = metrics
        self._bus = bus
        self._growth_min_window_ms = growth_min_window_s * 1000.0
        self._cooldown_s = auto_tune_cooldown_s
        self._last_tune = -math.inf
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pruner-numerics")
        # One job at a time per engine (an engine serves one namespace).
        self._jobs: JobRegistry[Job] = JobRegistry("pruning", _busy)
        self.counts = {"total": 0, "committed": 0, "refused": 0, "failed": 0, "conflicts": 0}
        self.pruned_edges_total = 0
        self.last_version = 0
        self.last_edge_count = 0
        metrics.tau.set(knobs.tau)
        metrics.backups.set(len(backups.list()))

    # ---- jobs ---------------------------------------------------------------------------------

    def submit(self, trigger: str, dry_run: bool, overrides: RunOverrides, reason: str = "") -> Job:
        """Create a job and start it in the background.

        Overrides are validated here (``KnobError``), before any job exists.

        Raises:
            JobBusy: a job is running.
        """
        run_settings(self.knobs, overrides)
        job = Job(trigger=trigger, dry_run=dry_run, overrides=overrides, reason=reason)
        return self._jobs.start(job, self._run)

    async def wait(self, job: Job) -> Job:
        """Wait until ``job`` has finished."""
        await job.wait()
        return job

    def get(self, job_id: str) -> Job:
        """The job ``job_id`` (empty: the newest); JobNotFound if not remembered."""
        return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop; JobNotFound, or JobFinished if it already has."""
        return self._jobs.cancel(job_id, "cancelled by request")

    async def run_numerics(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the numerics thread (serialised with running jobs)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def active(self) -> Job | None:
        """The running job, if any."""
        return self._jobs.running()

    async def close(self) -> None:
        await self._jobs.close("service stopping")
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, job: Job) -> None:
        started = time.perf_counter()
        job.start_running()
        try:
            await self._attempts(job)
        except SolveCancelled:
            job.finish(JobState.CANCELLED, "cancelled before anything was committed")
        except Exception as exc:  # a job reports its failure; the service keeps running
            log.exception("pruning_job_failed", job_id=job.job_id)
            job.finish(JobState.FAILED, str(exc) or type(exc).__name__)
        finally:
            self.counts["total"] += 1
            outcome = job.state.value
            if job.state is JobState.SUCCEEDED and not job.dry_run:
                self.counts["committed"] += 1
            elif job.state is JobState.REFUSED:
                self.counts["refused"] += 1
            elif job.state is JobState.FAILED:
                self.counts["failed"] += 1
            self.metrics.runs.labels(outcome).inc()
            self.metrics.run_seconds.observe(time.perf_counter() - started)
            log.info(
                "pruning_job_finished",
                job_id=job.job_id,
                trigger=job.trigger,
                state=outcome,
                dry_run=job.dry_run,
                base_version=job.base_version,
                committed_version=job.committed_version,
                edges_before=job.edges_before,
                edges_after=job.edges_after,
                message=job.message,
            )

    async def _attempts(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        await self._maybe_auto_tune()
        for attempt in range(self.knobs.max_conflict_retries + 1):
            if job.cancel_token.is_set():
                raise SolveCancelled("cancelled")
            base = await self.client.read_graph(0)
            job.base_version = base.version
            self._observe(base)
            settings = run_settings(self.knobs, job.overrides, seed=base.version)
            requested = job.overrides.tau if job.overrides.tau is not None else self.knobs.tau
            result: Computation = await loop.run_in_executor(
                self._executor, compute, base, settings, job.cancel_token.is_set
            )
            record(job, result, requested)
            self._observe_solve(job)
            if result.plan is None or not result.plan.accepted:
                reason = result.refusal or (plan_reason(result.plan) if result.plan else "")
                job.finish(JobState.REFUSED, reason)
                return
            if job.dry_run:
                job.finish(JobState.SUCCEEDED, f"dry run: would commit {summary(result.plan)}")
                return
            if job.cancel_token.is_set():
                raise SolveCancelled("cancelled")
            assert result.pruned is not None
            backup = await loop.run_in_executor(None, self.backups.save, base, 0, job.job_id)
            try:
                header = await self.client.commit_graph(
                    result.pruned,
                    base_version=base.version,
                    author="pruner",
                    reason=f"pruning job {job.job_id}: {summary(result.plan)}"
                    + (f"; {job.reason}" if job.reason else ""),
                    metadata={
                        "job_id": job.job_id,
                        "backup_id": backup.backup_id,
                        "tau": f"{job.tau_used:.6g}",
                        "trigger": job.trigger,
                    },
                )
            except VersionConflict as exc:
                await loop.run_in_executor(None, self.backups.discard, backup.backup_id)
                job.conflict_retries += 1
                self.counts["conflicts"] += 1
                self.metrics.conflicts.inc()
                log.info("pruning_conflict", job_id=job.job_id, attempt=attempt, error=str(exc))
                continue
            except BaseException:
                # The commit may or may not have landed; keep the backup (it is the version
                # read, so restoring it is always safe) and let the job fail.
                raise
            await loop.run_in_executor(
                None, self.backups.mark_committed, backup.backup_id, int(header.version)
            )
            self._committed(job, result, backup, int(header.version))
            return
        job.finish(
            JobState.FAILED,
            f"the graph changed under the pruner {job.conflict_retries} times in a row "
            f"(max_conflict_retries={self.knobs.max_conflict_retries}); try again when "
            "consolidation is quieter",
        )

    def _committed(self, job: Job, result: Computation, backup: BackupInfo, version: int) -> None:
        plan = result.plan
        assert plan is not None
        removed = plan.edges_before - plan.edges_after
        job.committed_version = version
        job.backup_id = backup.backup_id
        job.finish(JobState.SUCCEEDED, f"committed version {version}: {summary(plan)}")
        self.pruned_edges_total += removed
        self.metrics.pruned_edges.inc(removed)
        # The quality gauges describe what a commit did to the graph: a refused run or a dry run
        # changed nothing, and PrunerQualityDrop must not read its figures as a loss.
        self.metrics.quality_before.set(job.quality_before)
        self.metrics.quality_after.set(job.quality_after)
        self.metrics.quality_stderr.set(job.quality_stderr)
        self.metrics.edge_count.set(plan.edges_after)
        self.metrics.backups.set(len(self.backups.list()))
        self.last_version, self.last_edge_count = version, plan.edges_after
        self._bus.publish(
            GRAPH_PRUNED,
            events_pb2.GraphPruned(
                header=new_header(SERVICE),
                graph_version=version,
                edges_before=plan.edges_before,
                edges_after=plan.edges_after,
                quality_before=plan.quality_before.recall,
                quality_after=plan.quality_after.recall,
            ),
        )

    def _observe(self, base: GraphSnapshot) -> None:
        self.last_version, self.last_edge_count = base.version, base.edge_count
        self.metrics.edge_count.set(base.edge_count)

    def _observe_solve(self, job: Job) -> None:
        if job.solver is None:
            return
        self.metrics.solver_iterations.set(job.solver.iterations)
        self.metrics.duality_gap.set(job.solver.relative_gap)

    # ---- tuning -------------------------------------------------------------------------------

    async def growth(self) -> Growth:
        """Weekly growth of the edge count over the retained versions, and the rule's tau."""
        headers = await self.client.list_versions()
        weekly = math.nan
        dated = [h for h in headers if h.created_at_ms > 0 and h.version > 0]
        if len(dated) >= 2:
            latest = dated[0]
            now_ms = latest.created_at_ms
            # The newest version at least a week old, else the oldest retained one.
            older = [h for h in dated[1:] if now_ms - h.created_at_ms >= _WEEK_MS]
            ref = older[0] if older else dated[-1]
            span_ms = now_ms - ref.created_at_ms
            if ref.edge_count > 0 and span_ms >= max(self._growth_min_window_ms, 1.0):
                weekly = weekly_growth(int(ref.edge_count), int(latest.edge_count), span_ms / 864e5)
        proposed = self.knobs.tau
        if not math.isnan(weekly):
            proposed = operator_tau(tuned_tau(relative_tau(self.knobs.tau), weekly))
        self.metrics.growth.set(weekly)
        self.metrics.tau_proposed.set(proposed)
        return Growth(weekly, proposed)

    async def _maybe_auto_tune(self) -> None:
        growth = await self.growth()
        if not self.knobs.auto_tune or growth.proposed_tau == self.knobs.tau:
            return
        if time.monotonic() - self._last_tune < self._cooldown_s:
            return
        old = self.knobs.tau
        self.set_knobs(with_knobs(self.knobs, tau=growth.proposed_tau))
        self._last_tune = time.monotonic()
        log.info(
            "pruner_auto_tune",
            rule="growth>5%/week",
            growth=growth.weekly,
            old=old,
            new=self.knobs.tau,
        )

    # ---- rollback -----------------------------------------------------------------------------

    async def rollback(self, backup_id: str, reason: str) -> tuple[BackupInfo, int]:
        """Commit backup ``backup_id`` (empty: the newest) as a new version; returns it.

        The restored version has the backup's concepts, biases, edges and prototypes. Concepts
        added to the graph after the backup keep their positions (the scheduler never moves a
        concept) with no edges and their current bias.

        Raises:
            BackupNotFound, BackupCorrupt: no such backup.
            RollbackImpossible: the graph's concept list no longer extends the backup's.
            VersionConflict: the graph kept changing under the rollback.
        """
        loop = asyncio.get_running_loop()
        bid = backup_id or await loop.run_in_executor(None, self.backups.latest_id)
        info, saved = await loop.run_in_executor(None, self.backups.load, bid)
        for attempt in range(self.knobs.max_conflict_retries + 1):
            latest = await self.client.read_graph(0)
            restored = _restorable(saved, latest)
            try:
                header = await self.client.commit_graph(
                    restored,
                    base_version=latest.version,
                    author="rollback",
                    reason=f"rollback to backup {bid} (version {info.graph_version})"
                    + (f"; {reason}" if reason else ""),
                    metadata={"backup_id": bid, "restored_version": str(info.graph_version)},
                )
            except VersionConflict:
                if attempt == self.knobs.max_conflict_retries:
                    raise
                continue
            version = int(header.version)
            self.last_version, self.last_edge_count = version, restored.edge_count
            self.metrics.edge_count.set(restored.edge_count)
            log.info(
                "pruning_rolled_back", backup_id=bid, restored=info.graph_version, version=version
            )
            return info, version
        raise AssertionError("unreachable")

    def set_knobs(self, knobs: SparsePrunerConfig) -> None:
        self.knobs = knobs
        self.backups.retention = knobs.backup_retention
        self.metrics.tau.set(knobs.tau)


def _busy(job: Job) -> str:
    return (
        f"pruning job {job.job_id} ({STARTED_BY.get(job.trigger, job.trigger)}) is "
        f"{job.state.value} and jobs run one at a time: wait for it "
        "(GetPruningStatus) or cancel it (CancelPruning)"
    )


def _restorable(saved: GraphSnapshot, latest: GraphSnapshot) -> GraphSnapshot:
    """``saved`` over the latest concept list (which must extend the saved one)."""
    n_saved, n_now = saved.n_concepts, latest.n_concepts
    if latest.concept_ids[:n_saved] != saved.concept_ids:
        raise RollbackImpossible(
            f"the graph's concept list ({n_now} concepts) does not start with the backup's "
            f"{n_saved} concepts: the backup belongs to another graph and cannot be restored"
        )
    if n_now == n_saved:
        return saved
    pad = n_now - n_saved
    old = saved.weights
    # New concepts are empty rows and columns after the saved ones.
    indptr = np.concatenate([old.indptr, np.full(pad, old.indptr[-1])])
    w = sp.csr_matrix((old.data, old.indices, indptr), shape=(n_now, n_now))
    return replace(
        saved,
        concept_ids=latest.concept_ids,
        weights=w,
        biases=np.concatenate([saved.biases, latest.biases[n_saved:]]),
    )
