"""The SparsePruner's gRPC servicer: proto in, proto out, errors mapped to status codes.

INVALID_ARGUMENT names the field and the fix and changes nothing; NOT_FOUND for an unknown job or
backup; FAILED_PRECONDITION for cancelling a finished job or restoring a backup onto another
graph, or a rollback that kept conflicting; RESOURCE_EXHAUSTED while a job runs; UNAVAILABLE when
the SleepScheduler does not answer (ERRORS below; anything else is INTERNAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import grpc

from mcp_services.common.jobs import JobBusy, JobFinished, JobNotFound, JobState
from mcp_services.common.rpc import ErrorMap, Status, abort, errors
from mcp_services.common.timestamps import timestamp_of_ms
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc
from mcp_services.sparse_pruner.adapters.backups import BackupCorrupt, BackupInfo, BackupNotFound
from mcp_services.sparse_pruner.domain.jobs import (
    Job,
    compute,
    plan_reason,
    record,
    removed_order,
)
from mcp_services.sparse_pruner.domain.knobs import (
    KnobError,
    RunOverrides,
    run_settings,
    with_knobs,
)
from mcp_services.sparse_pruner.domain.ports import (
    SchedulerError,
    SchedulerUnavailable,
    VersionConflict,
    VersionGone,
)
from mcp_services.sparse_pruner.domain.usage import edge_usage
from mcp_services.sparse_pruner.engine import (
    PruningEngine,
    RollbackImpossible,
)
from mcp_services.sparse_pruner.schedule import Schedule

DEFAULT_USAGE_LIMIT = 100
DEFAULT_PREVIEW_LIMIT = 1000
MAX_LIST = 100_000

_STATES = {
    JobState.PENDING: pruner_pb2.JOB_STATE_PENDING,
    JobState.RUNNING: pruner_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pruner_pb2.JOB_STATE_SUCCEEDED,
    JobState.REFUSED: pruner_pb2.JOB_STATE_REFUSED,
    JobState.FAILED: pruner_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: pruner_pb2.JOB_STATE_CANCELLED,
}


_INVALID = grpc.StatusCode.INVALID_ARGUMENT
ERRORS = ErrorMap(
    {
        JobBusy: grpc.StatusCode.RESOURCE_EXHAUSTED,
        JobNotFound: Status(grpc.StatusCode.NOT_FOUND, "job_id: {exc}"),
        JobFinished: grpc.StatusCode.FAILED_PRECONDITION,
        BackupNotFound: Status(
            grpc.StatusCode.NOT_FOUND,
            "backup_id: no backup {exc} (see ListBackups; old ones are dropped by "
            "backup_retention)",
        ),
        BackupCorrupt: grpc.StatusCode.DATA_LOSS,
        RollbackImpossible: grpc.StatusCode.FAILED_PRECONDITION,
        SchedulerUnavailable: Status(grpc.StatusCode.UNAVAILABLE, "{exc}; retry when it is back"),
        VersionGone: grpc.StatusCode.NOT_FOUND,
        VersionConflict: Status(grpc.StatusCode.FAILED_PRECONDITION, "{exc}; try again"),
        SchedulerError: grpc.StatusCode.INTERNAL,
    }
)
# Run options arrive under `options` in TriggerPruning and PreviewPruning.
_OPTIONS = errors({KnobError: Status(_INVALID, "options.{exc}")})


def overrides_of(options: pruner_pb2.PruneOptions) -> RunOverrides:
    """The per-run overrides a request set (unset fields keep the knobs in force)."""
    return RunOverrides(
        tau=options.tau if options.HasField("tau") else None,
        l1_threshold=options.l1_threshold if options.HasField("l1_threshold") else None,
        max_quality_drop=options.max_quality_drop if options.HasField("max_quality_drop") else None,
        retention_target=options.retention_target if options.HasField("retention_target") else None,
        max_edges_to_prune=options.max_edges_to_prune
        if options.HasField("max_edges_to_prune")
        else None,
        max_backoffs=options.max_backoffs if options.HasField("max_backoffs") else None,
    )


def job_message(job: Job) -> pruner_pb2.PruningJob:
    msg = pruner_pb2.PruningJob(
        job_id=job.job_id,
        state=_STATES[job.state],
        dry_run=job.dry_run,
        trigger=job.trigger,
        created_at=timestamp_of_ms(job.created_ms),
        base_version=job.base_version,
        committed_version=job.committed_version,
        edges_before=job.edges_before,
        edges_after=job.edges_after,
        quality_before=job.quality_before,
        quality_after=job.quality_after,
        tau_requested=job.tau_requested,
        tau_used=job.tau_used,
        conflict_retries=job.conflict_retries,
        backup_id=job.backup_id,
        message=job.message,
        prototypes_checked=job.prototypes_checked,
        quality_stderr=job.quality_stderr,
    )
    if job.finished_ms:
        msg.finished_at.CopyFrom(timestamp_of_ms(job.finished_ms))
    if job.solver is not None:
        s = job.solver
        msg.solver.CopyFrom(
            pruner_pb2.SolverReport(
                iterations=s.iterations,
                relative_gap=s.relative_gap,
                refit_kkt_residual=s.refit_kkt_residual,
                lam=s.lam,
                lambda_max=s.lambda_max,
                attempts=s.attempts,
                seconds=s.seconds,
            )
        )
    return msg


def backup_message(info: BackupInfo) -> pruner_pb2.Backup:
    return pruner_pb2.Backup(
        backup_id=info.backup_id,
        graph_version=info.graph_version,
        pruned_version=info.pruned_version,
        job_id=info.job_id,
        created_at=timestamp_of_ms(info.created_at_ms),
        concept_count=info.concept_count,
        edge_count=info.edge_count,
    )


# The longest schedule interval: a year (a next-run time must stay a valid Timestamp).
_YEAR_S = 365.0 * 24 * 3600


@ERRORS.servicer
class SparsePrunerServicer(pruner_pb2_grpc.SparsePrunerServicer):
    def __init__(self, engine: PruningEngine, schedule: Schedule) -> None:
        self._engine = engine
        self._schedule = schedule

    def _config(self) -> pruner_pb2.PrunerConfig:
        k = self._engine.knobs
        return pruner_pb2.PrunerConfig(
            tau=k.tau,
            l1_threshold=k.l1_threshold,
            max_quality_drop=k.max_quality_drop,
            auto_tune=k.auto_tune,
            retention_target=k.retention_target,
            max_edges_to_prune=k.max_edges_to_prune,
            max_backoffs=k.max_backoffs,
            backup_retention=k.backup_retention,
            trigger_on_consolidation=k.trigger_on_consolidation,
            schedule_interval_s=self._schedule.interval_s,
            max_conflict_retries=k.max_conflict_retries,
        )

    async def GetConfig(
        self, request: pruner_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.PrunerConfig:
        return self._config()

    @errors({KnobError: Status(_INVALID, "{exc}; nothing was changed")})
    async def UpdateConfig(
        self, request: pruner_pb2.UpdateConfigRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.PrunerConfig:
        fields = (
            "tau", "l1_threshold", "max_quality_drop", "auto_tune", "retention_target",
            "max_edges_to_prune", "max_backoffs", "backup_retention",
            "trigger_on_consolidation", "max_conflict_retries",
        )  # fmt: skip
        changes = {f: getattr(request, f) for f in fields if request.HasField(f)}  # type: ignore[arg-type]
        knobs = with_knobs(self._engine.knobs, **changes)
        self._engine.set_knobs(knobs)
        return self._config()

    @_OPTIONS
    async def TriggerPruning(
        self, request: pruner_pb2.TriggerPruningRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.PruningJob:
        job = self._engine.submit(
            "rpc", request.dry_run, overrides_of(request.options), request.reason
        )
        if request.background:
            return job_message(job)
        try:
            await self._engine.wait(job)
        except asyncio.CancelledError:
            # The caller went away (deadline, disconnect): the job goes on; it is not cancelled
            # by a lost client, only by CancelPruning.
            raise
        return job_message(job)

    async def GetPruningStatus(
        self, request: pruner_pb2.GetPruningStatusRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.PruningJob:
        return job_message(self._engine.get(request.job_id))

    async def CancelPruning(
        self, request: pruner_pb2.CancelPruningRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.PruningJob:
        if not request.job_id:
            await abort(context, _INVALID, "job_id: empty; pass the job to cancel")
        return job_message(self._engine.cancel(request.job_id))

    async def GetPruningStats(
        self, request: pruner_pb2.GetPruningStatsRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.PruningStats:
        e = self._engine
        try:
            growth = await e.growth()
        except SchedulerError:
            growth = None  # stats stay available while the scheduler is away
        stats = pruner_pb2.PruningStats(
            runs_total=e.counts["total"],
            runs_committed=e.counts["committed"],
            runs_refused=e.counts["refused"],
            runs_failed=e.counts["failed"],
            pruned_edges_total=e.pruned_edges_total,
            graph_version=e.last_version,
            edge_count=e.last_edge_count,
            tau=e.knobs.tau,
            weekly_growth=growth.weekly if growth else math.nan,
            proposed_tau=growth.proposed_tau if growth else e.knobs.tau,
            backups=len(e.backups.list()),
            conflicts_total=e.counts["conflicts"],
        )
        with contextlib.suppress(JobNotFound):
            stats.last_job.CopyFrom(job_message(e.get("")))
        return stats

    async def SchedulePruning(
        self, request: pruner_pb2.SchedulePruningRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.ScheduleInfo:
        if not (math.isfinite(request.interval_s) and 0.0 <= request.interval_s <= _YEAR_S):
            await abort(
                context,
                _INVALID,
                f"interval_s: must be seconds in [0, {_YEAR_S:.0f}] (0: off; at most a year), "
                f"got {request.interval_s}",
            )
        self._schedule.set(request.interval_s, request.dry_run)
        info = pruner_pb2.ScheduleInfo(interval_s=request.interval_s, dry_run=request.dry_run)
        if self._schedule.next_run_ms:
            info.next_run_at.CopyFrom(timestamp_of_ms(self._schedule.next_run_ms))
        return info

    async def GetEdgeUsage(
        self, request: pruner_pb2.GetEdgeUsageRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.GetEdgeUsageResponse:
        if request.graph_version < 0:
            await abort(
                context,
                _INVALID,
                f"graph_version: {request.graph_version} is negative; 0 reads the latest",
            )
        if not 0 <= request.limit <= MAX_LIST:
            await abort(
                context,
                _INVALID,
                f"limit: must be in [0, {MAX_LIST}] (0: {DEFAULT_USAGE_LIMIT}), got "
                f"{request.limit}",
            )
        graph = await self._engine.client.read_graph(request.graph_version)
        concept: int | None = None
        if request.concept_id:
            try:
                concept = graph.concept_ids.index(request.concept_id)
            except ValueError:
                await abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"concept_id: {request.concept_id!r} is not in graph version {graph.version}",
                )
        limit = request.limit or DEFAULT_USAGE_LIMIT
        table = await asyncio.get_running_loop().run_in_executor(
            None, edge_usage, graph, limit, concept
        )
        ids = graph.concept_ids
        return pruner_pb2.GetEdgeUsageResponse(
            graph_version=graph.version,
            edge_count=graph.edge_count,
            prototype_count=len(graph.prototypes),
            edges=[
                pruner_pb2.EdgeUsage(
                    edge=pruner_pb2.Edge(
                        i=int(i), j=int(j), concept_i=ids[i], concept_j=ids[j], weight=float(w)
                    ),
                    usage=float(u),
                    support_fraction=float(f),
                )
                for i, j, w, u, f in zip(
                    table.edge_i,
                    table.edge_j,
                    table.weights,
                    table.usage,
                    table.support_fraction,
                    strict=True,
                )
            ],
        )

    @_OPTIONS
    async def PreviewPruning(
        self, request: pruner_pb2.PreviewPruningRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.PruningPreview:
        if not 0 <= request.limit <= MAX_LIST:
            await abort(
                context,
                _INVALID,
                f"limit: must be in [0, {MAX_LIST}] (0: {DEFAULT_PREVIEW_LIMIT}), got "
                f"{request.limit}",
            )
        overrides = overrides_of(request.options)
        run_settings(self._engine.knobs, overrides)  # bad options fail before the graph is read
        graph = await self._engine.client.read_graph(0)
        settings = run_settings(self._engine.knobs, overrides, seed=graph.version)
        result = await self._engine.run_numerics(compute, graph, settings, lambda: False)
        job = Job(job_id="preview", trigger="preview", dry_run=True, overrides=overrides)
        requested = overrides.tau if overrides.tau is not None else self._engine.knobs.tau
        record(job, result, requested)
        plan = result.plan
        preview = pruner_pb2.PruningPreview(
            graph_version=graph.version,
            would_accept=result.accepted,
            reason=result.refusal or (plan_reason(plan) if plan else ""),
            edges_before=graph.edge_count,
            edges_after=job.edges_after,
            recall_before=job.quality_before,
            recall_after=job.quality_after,
            expected_quality_change=job.quality_after - job.quality_before,
            tau_used=job.tau_used if plan else requested,
            quality_stderr=job.quality_stderr,
        )
        if job.solver is not None:
            preview.solver.CopyFrom(job_message(job).solver)
        if plan is not None and plan.accepted:
            order = removed_order(plan)
            preview.removed_count = int(order.size)
            ids = graph.concept_ids
            for k in order[-(request.limit or DEFAULT_PREVIEW_LIMIT) :]:
                i, j = int(plan.removed_i[k]), int(plan.removed_j[k])
                # The domain's +-1 coupling is half the scheduler's {0, 1} weight.
                w = 2.0 * float(plan.removed_weights[k])
                preview.removed.add(i=i, j=j, concept_i=ids[i], concept_j=ids[j], weight=w)
        return preview

    async def ListBackups(
        self, request: pruner_pb2.ListBackupsRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.ListBackupsResponse:
        infos = await asyncio.get_running_loop().run_in_executor(None, self._engine.backups.list)
        return pruner_pb2.ListBackupsResponse(backups=[backup_message(i) for i in infos])

    async def RollbackPruning(
        self, request: pruner_pb2.RollbackPruningRequest, context: grpc.aio.ServicerContext
    ) -> pruner_pb2.RollbackPruningResponse:
        info, version = await self._engine.rollback(request.backup_id, request.reason)
        return pruner_pb2.RollbackPruningResponse(
            backup=backup_message(info), restored_version=version
        )
