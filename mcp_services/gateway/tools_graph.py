"""memory.sleep (consolidation cycles) and memory.prune (L1 pruning behind a quality guard)."""

from __future__ import annotations

from typing import Annotated, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import Field

from mcp_services.gateway.backends import CallSpec
from mcp_services.gateway.convert import ArgumentError
from mcp_services.gateway.core import CALL, Gateway, GatewayToolError
from mcp_services.gen.tori.pruner.v1 import pruner_pb2 as ppb
from mcp_services.gen.tori.sleep.v1 import sleep_pb2 as spb

PRUNE_DESCRIPTION = (
    "Keep the concept graph sparse: drop weak edges by L1 optimisation, only as far as a quality "
    "guard allows (recall of stored memories may fall by at most maxQualityDrop, else it backs off "
    "or refuses and changes nothing). dryRun reports what would go without changing anything. "
    "By default it waits and returns the finished job (edges before/after, quality before/after "
    "with the standard error of their difference, committed graph version, backup id); wait: "
    "false returns a job handle at once, and memory.prune with that jobId reports its progress. "
    "One pruning job runs at a time, and one starts by itself after every memory.sleep."
)
# The largest tau the pruner accepts (sparse_pruner.domain.knobs.TAU_MAX: lambda_max, in its units).
TAU_MAX = 0.01
# What started a running job (PruningJob.trigger), in a tool caller's words.
_STARTED_BY = {
    "consolidation": "started automatically after the last consolidation (every memory.sleep "
    "is followed by one)",
    "schedule": "started by the pruner's own schedule",
    "rpc": "started by another request",
    "cli": "started by an operator",
}
_ACTIVE = (ppb.JOB_STATE_PENDING, ppb.JOB_STATE_RUNNING)


def _iso(ts: Timestamp) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime().isoformat() + "Z"


def job_json(job: ppb.PruningJob) -> dict[str, Any]:
    return {
        "jobId": job.job_id,
        "state": ppb.JobState.Name(job.state).removeprefix("JOB_STATE_"),
        "dryRun": job.dry_run,
        "baseVersion": job.base_version,
        "committedVersion": job.committed_version,
        "edgesBefore": job.edges_before,
        "edgesAfter": job.edges_after,
        "qualityBefore": job.quality_before,
        "qualityAfter": job.quality_after,
        "qualityStderr": job.quality_stderr,
        "tauUsed": job.tau_used,
        "backupId": job.backup_id,
        "message": job.message,
        "createdAt": _iso(job.created_at),
        "finishedAt": _iso(job.finished_at),
    }


async def _busy_refusal(gw: Gateway, spec: CallSpec, refused: GatewayToolError) -> GatewayToolError:
    """The pruner refused a new job because one is running: say which, and what to do, in the
    tool's own terms (the pruner's text names its gRPC methods, which a tool caller cannot use)."""
    try:
        running = await gw.call(spec, ppb.GetPruningStatusRequest())
    except GatewayToolError:
        running = None
    if running is None or running.state not in _ACTIVE:
        text = (
            "another pruning job was running and has just finished (one runs at a time); "
            "nothing was started: call memory.prune again"
        )
    else:
        started = _STARTED_BY.get(running.trigger, "started by another request")
        text = (
            f"a pruning job {started} is running (jobId {running.job_id}), and one runs at a "
            "time, so nothing new was started. Wait for it: memory.prune with that jobId "
            "reports its progress and result; or retry in a few seconds"
        )
    return GatewayToolError(text, refused.outcome, refused.code)


def build_prune(gw: Gateway) -> Any:
    async def prune(
        dryRun: Annotated[
            bool, Field(description="Report what would be pruned; change nothing.")
        ] = False,
        wait: Annotated[
            bool, Field(description="Wait for the end (default); false returns a job handle.")
        ] = True,
        jobId: Annotated[
            str | None,
            Field(description="Report the state of this earlier job instead of starting one."),
        ] = None,
        tau: Annotated[
            float | None,
            Field(
                gt=0,
                le=TAU_MAX,
                description="L1 strength relative to the weight scale (default 0.001, at most "
                f"{TAU_MAX}); tauUsed reports the one that passed in the same units.",
            ),
        ] = None,
        maxQualityDrop: Annotated[
            float | None,
            Field(ge=0, le=1, description="Largest recall drop allowed, 0-1 (default 0.05)."),
        ] = None,
        reason: Annotated[
            str | None, Field(description="Why, kept with the committed graph version.")
        ] = None,
    ) -> dict[str, Any]:
        deadlines = CALL.get().snap.cfg.deadlines
        status = CallSpec("sparse_pruner", "GetPruningStatus", deadlines.prune_s, "prune_s", True)
        if jobId is not None:
            if dryRun or tau is not None or maxQualityDrop is not None or reason:
                raise ArgumentError(
                    "jobId", "asks for a job's state; leave out the options of a new run"
                )
            try:
                job = await gw.call(status, ppb.GetPruningStatusRequest(job_id=jobId))
            except GatewayToolError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                raise ArgumentError(
                    "jobId",
                    f"no pruning job {jobId!r}: use the jobId a memory.prune call returned (the "
                    "pruner keeps its last 200 jobs until it restarts)",
                ) from None
            return {"job": job_json(job)}
        options = ppb.PruneOptions()
        if tau is not None:
            options.tau = tau
        if maxQualityDrop is not None:
            options.max_quality_drop = maxQualityDrop
        req = ppb.TriggerPruningRequest(
            dry_run=dryRun, background=not wait, options=options, reason=reason or "memory.prune"
        )
        # A real run changes the graph: never repeated. A dry run changes nothing: retried.
        spec = CallSpec("sparse_pruner", "TriggerPruning", deadlines.prune_s, "prune_s", dryRun)
        try:
            job = await gw.call(spec, req)
        except GatewayToolError as exc:
            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            raise await _busy_refusal(gw, status, exc) from None
        return {"job": job_json(job)}

    return prune


SLEEP_DESCRIPTION = (
    "Consolidate memory: replay the episodes not yet consolidated into the concept graph "
    "(energy-based wake/sleep learning; no model is called). `once: true` runs one cycle and "
    "returns its result (episodes processed, prototypes, energy before/after and delta, settle "
    "loops, the new graph version); otherwise it starts the cycle and returns a job handle at "
    "once: call memory.sleep with that jobId to follow it. Select episodes with tags, minEnergy, "
    "minAgeS/maxAgeS and maxEpisodes."
)


def sleep_job_json(job: spb.ConsolidationJob) -> dict[str, Any]:
    return {
        "jobId": job.job_id,
        "state": spb.JobState.Name(job.state).removeprefix("JOB_STATE_"),
        "phase": job.phase,
        "progress": job.progress,
        "episodesProcessed": job.episodes_processed,
        "prototypes": job.prototypes,
        "energyBefore": job.energy_before,
        "energyAfter": job.energy_after,
        "energyDelta": job.energy_delta,
        "settleLoops": job.settle_loops,
        "graphVersion": job.graph_version,
        "durationS": job.duration_s,
        "tuning": list(job.tuning),
        # Why a cycle learnt what it did, or nothing ("no_structure: ...", "faded: ...", an
        # empty selection), and the tuning rules that fired: the caller sees the reason, not a
        # bare energyDelta of 0.
        "notes": list(job.notes)
        or (
            ["nothing new: no unconsolidated episode matched the selection"]
            if job.state == spb.JOB_STATE_SUCCEEDED and not job.episodes_processed
            else []
        ),
        "advice": list(job.advice),
        "prototypesFaded": job.prototypes_faded,
        "episodesUnassigned": job.episodes_unassigned,
        "error": job.error,
    }


def build_sleep(gw: Gateway) -> Any:
    async def sleep(
        once: Annotated[
            bool,
            Field(description="Run one cycle now and return its result; false returns a job."),
        ] = False,
        jobId: Annotated[
            str | None, Field(description="Report the state of this earlier consolidation job.")
        ] = None,
        tags: Annotated[
            list[str] | None, Field(description="Only episodes carrying every one of these.")
        ] = None,
        minEnergy: Annotated[
            float | None, Field(ge=0, description="Only episodes with energy >= this.")
        ] = None,
        minAgeS: Annotated[
            float | None, Field(ge=0, description="Only episodes at least this many seconds old.")
        ] = None,
        maxAgeS: Annotated[
            float | None, Field(ge=0, description="Only episodes at most this many seconds old.")
        ] = None,
        maxEpisodes: Annotated[
            int | None, Field(ge=1, le=1_000_000, description="At most this many, oldest first.")
        ] = None,
    ) -> dict[str, Any]:
        deadlines = CALL.get().snap.cfg.deadlines
        selection_given = any(
            v is not None for v in (tags, minEnergy, minAgeS, maxAgeS, maxEpisodes)
        )
        if jobId is not None:
            if once or selection_given:
                raise ArgumentError("jobId", "asks for a job's state; leave out once and filters")
            spec = CallSpec(
                "sleep_scheduler", "GetConsolidationStatus", deadlines.sleep_s, "sleep_s", True
            )
            job = await gw.call(spec, spb.GetConsolidationStatusRequest(job_id=jobId))
            return {"job": sleep_job_json(job)}
        if minAgeS is not None and maxAgeS is not None and maxAgeS < minAgeS:
            raise ArgumentError("maxAgeS", f"{maxAgeS} is below minAgeS {minAgeS}; swap them")
        selection = spb.EpisodeSelection(
            tags=tags or [],
            min_energy=minEnergy or 0.0,
            min_age_s=minAgeS or 0.0,
            max_age_s=maxAgeS or 0.0,
            max_episodes=maxEpisodes or 0,
        )
        req = spb.StartConsolidationRequest(selection=selection, wait=once, trigger="mcp")
        # Starting a cycle is not idempotent: never repeated.
        spec = CallSpec(
            "sleep_scheduler", "StartConsolidation", deadlines.sleep_s, "sleep_s", False
        )
        job = await gw.call(spec, req)
        return {"job": sleep_job_json(job)}

    return sleep
