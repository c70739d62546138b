"""The consolidation half of the SleepScheduler servicer: jobs, replay stats, config, schedule.

Status codes: INVALID_ARGUMENT (a field, named), NOT_FOUND (unknown job), ABORTED (another
consolidation holds the lease: retry later), UNAVAILABLE (Redis for the lease is away): JOB_ERRORS
below, part of the servicer's error map (server.py).
"""

from __future__ import annotations

import math

import grpc
import structlog

from mcp_services.common.errors import InputError
from mcp_services.common.jobs import JobBusy, JobNotFound, JobState
from mcp_services.common.rpc import Rules, abort
from mcp_services.common.timestamps import timestamp_of_ms
from mcp_services.gen.tori.sleep.v1 import sleep_pb2
from mcp_services.sleep_scheduler.adapters.lease import LeaseUnavailable
from mcp_services.sleep_scheduler.consolidator import Consolidator, Job
from mcp_services.sleep_scheduler.ports import Selection
from mcp_services.sleep_scheduler.schedule import Schedule, ScheduleSpec

log = structlog.get_logger(__name__)

UPDATABLE = ("t0", "eta", "auto_tune", "pressure_threshold")
JOB_ERRORS: Rules = {
    JobBusy: grpc.StatusCode.ABORTED,
    LeaseUnavailable: grpc.StatusCode.UNAVAILABLE,
    JobNotFound: grpc.StatusCode.NOT_FOUND,
}

_STATES = {
    JobState.PENDING: sleep_pb2.JOB_STATE_PENDING,
    JobState.RUNNING: sleep_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: sleep_pb2.JOB_STATE_SUCCEEDED,
    # A consolidation never refuses; were one to, it committed nothing: failed, to a client.
    JobState.REFUSED: sleep_pb2.JOB_STATE_FAILED,
    JobState.FAILED: sleep_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: sleep_pb2.JOB_STATE_CANCELLED,
}


def job_to_proto(live: Job) -> sleep_pb2.ConsolidationJob:
    job = live.snapshot()  # one instant: the worker thread updates the live job per epoch
    out = sleep_pb2.ConsolidationJob(
        job_id=job.job_id,
        state=_STATES[job.state],
        trigger=job.trigger,
        progress=job.progress,
        phase=job.phase,
        temperature=job.temperature,
        episodes_processed=job.episodes,
        prototypes=job.prototypes,
        epochs_run=job.epochs,
        energy_before=job.energy_before,
        energy_after=job.energy_after,
        energy_delta=job.energy_delta,
        energy_drop=job.energy_drop,
        settle_loops=job.settle_loops,
        stability_before=job.stability_before,
        stability_after=job.stability_after,
        graph_version=job.graph_version,
        base_version=job.base_version,
        t0=job.t0,
        eta=job.eta,
        error=job.message,
        tuning=job.tuning,
        notes=job.notes,
        prototypes_faded=job.prototypes_faded,
        episodes_unassigned=job.episodes_unassigned,
        advice=job.advice,
    )
    out.started_at.CopyFrom(timestamp_of_ms(job.created_ms))
    if job.finished_ms:
        out.finished_at.CopyFrom(timestamp_of_ms(job.finished_ms))
        out.duration_s = (job.finished_ms - job.created_ms) / 1000.0
    return out


def selection_of_proto(sel: sleep_pb2.EpisodeSelection, default_max: int) -> Selection:
    """Raises InputError naming the field."""
    for name in ("min_age_s", "max_age_s", "min_energy"):
        v = getattr(sel, name)
        if not math.isfinite(v):
            raise InputError(f"selection.{name} is not finite: send a number")
    if sel.max_episodes < 0:
        raise InputError("selection.max_episodes is negative: send 0 (the default) or a count")
    return Selection(
        min_age_s=sel.min_age_s,
        max_age_s=sel.max_age_s,
        tags=tuple(sel.tags),
        min_energy=sel.min_energy,
        max_episodes=sel.max_episodes or default_max,
    )


class JobRpcs:
    """StartConsolidation, status, cancel, replay stats, UpdateConfig, ScheduleConsolidation."""

    def __init__(self, consolidator: Consolidator, schedule: Schedule) -> None:
        self.c = consolidator
        self._schedule = schedule

    def _selection(self, sel: sleep_pb2.EpisodeSelection) -> Selection:
        return selection_of_proto(sel, self.c.knobs.max_episodes)

    async def start(
        self, request: sleep_pb2.StartConsolidationRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ConsolidationJob:
        selection = self._selection(request.selection)
        job = await self.c.start(selection, request.trigger or "rpc", request.wait)
        return job_to_proto(job)

    async def status(
        self, request: sleep_pb2.GetConsolidationStatusRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ConsolidationJob:
        return job_to_proto(self.c.jobs.get(request.job_id))

    async def cancel(
        self, request: sleep_pb2.CancelConsolidationRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ConsolidationJob:
        if not request.job_id:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "job_id is empty: name the job to stop"
            )
        return job_to_proto(await self.c.cancel(request.job_id))

    def replay_stats(self) -> sleep_pb2.ReplayStats:
        t = self.c.totals
        latest = self.c.store.read()
        return sleep_pb2.ReplayStats(
            cycles_total=t.cycles,
            cycles_failed=t.failed,
            episodes_total=t.episodes,
            last_energy_delta=t.last_energy_delta,
            last_settle_loops=t.last_settle_loops,
            graph_version=latest.meta.version,
            prototype_count=int(latest.prototypes.shape[0]),
            recent=[job_to_proto(j) for j in self.c.jobs.recent(20)],
        )

    def config(self) -> sleep_pb2.SchedulerConfig:
        k = self.c.knobs
        return sleep_pb2.SchedulerConfig(
            t0=k.t0, eta=k.eta, auto_tune=k.auto_tune, pressure_threshold=k.pressure_threshold
        )

    async def update_config(
        self, request: sleep_pb2.UpdateConfigRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.SchedulerConfig:
        fields = list(request.fields)
        unknown = [f for f in fields if f not in UPDATABLE]
        if not fields or unknown:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"fields {unknown or '(none)'}: name the knobs to change among {list(UPDATABLE)}",
            )
        cfg = request.config
        checks = {
            "t0": (cfg.t0 > 0 and math.isfinite(cfg.t0), "config.t0 must be > 0, e.g. 2.0"),
            "eta": (cfg.eta > 0 and math.isfinite(cfg.eta), "config.eta must be > 0, e.g. 0.01"),
            "pressure_threshold": (
                cfg.pressure_threshold >= 0,
                "config.pressure_threshold must be >= 0 (0: off)",
            ),
        }
        for f in fields:
            ok, msg = checks.get(f, (True, ""))
            if not ok:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, msg)
        old = self.config()
        self.c.knobs = k = self.c.knobs.model_copy(update={f: getattr(cfg, f) for f in fields})
        self.c.metrics.t0.set(k.t0)
        self.c.metrics.eta.set(k.eta)
        log.info("config_updated", fields=fields, old=str(old).replace("\n", " "))
        return self.config()

    async def schedule(
        self, request: sleep_pb2.ScheduleConsolidationRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.ScheduleConsolidationResponse:
        if request.clear:
            spec = ScheduleSpec()
        else:
            selection = self._selection(request.selection)
            if not request.cron and not request.every_s > 0:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "set cron (e.g. '0 3 * * *') or every_s > 0, or clear=true to remove it",
                )
            spec = ScheduleSpec(request.cron, request.every_s, selection)
        self._schedule.set(spec)
        return self.schedule_state()

    def schedule_state(self) -> sleep_pb2.ScheduleConsolidationResponse:
        s = self._schedule
        out = sleep_pb2.ScheduleConsolidationResponse(
            active=s.spec.active, cron=s.spec.cron, every_s=s.spec.every_s
        )
        if s.spec.active:
            out.next_run.CopyFrom(timestamp_of_ms(int(s.next_run * 1000)))
        return out
