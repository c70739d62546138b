"""memory.prune (L1 pruning of the concept graph behind a quality guard)."""

from __future__ import annotations

from typing import Annotated, Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import Field

from mcp_services.gateway.backends import CallSpec
from mcp_services.gateway.convert import ArgumentError
from mcp_services.gateway.core import CALL, Gateway
from mcp_services.gen.tori.pruner.v1 import pruner_pb2 as ppb

PRUNE_DESCRIPTION = (
    "Keep the concept graph sparse: drop weak edges by L1 optimisation, only as far as a quality "
    "guard allows (recall of stored memories may fall by at most maxQualityDrop, else it backs off "
    "or refuses and changes nothing). dryRun reports what would go without changing anything. "
    "By default it waits and returns the finished job (edges before/after, quality before/after, "
    "committed graph version, backup id); wait: false returns a job handle at once, and "
    "memory.prune with that jobId reports its progress."
)


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
        "tauUsed": job.tau_used,
        "backupId": job.backup_id,
        "message": job.message,
        "createdAt": _iso(job.created_at),
        "finishedAt": _iso(job.finished_at),
    }


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
            Field(gt=0, description="L1 strength relative to the weight scale (default 0.001)."),
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
        if jobId is not None:
            if dryRun or tau is not None or maxQualityDrop is not None or reason:
                raise ArgumentError(
                    "jobId", "asks for a job's state; leave out the options of a new run"
                )
            spec = CallSpec("sparse_pruner", "GetPruningStatus", deadlines.prune_s, "prune_s", True)
            job = await gw.call(spec, ppb.GetPruningStatusRequest(job_id=jobId))
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
        job = await gw.call(spec, req)
        return {"job": job_json(job)}

    return prune
