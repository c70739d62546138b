"""The memory.* tools: what each does, its arguments (the input schema) and its service calls.

A tool exists only when the service RPC behind it exists in the generated code (AVAILABLE); the
gateway never answers for a service that cannot do the work.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp_types import ToolAnnotations
from pydantic import Field

from mcp_services.gateway import metrics as m
from mcp_services.gateway.backends import CallSpec
from mcp_services.gateway.convert import (
    CONCEPTS_DOC,
    ActivationArg,
    Concepts,
    EpisodeArg,
    FrameArg,
    SourceArg,
    episode_json,
    episode_pb,
)
from mcp_services.gateway.core import CALL, Gateway, GatewayMCP, GatewayToolError
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vpb
from mcp_services.gen.tori.koopman.v1 import koopman_pb2 as kpb
from mcp_services.gen.tori.pruner.v1 import pruner_pb2 as ppb
from mcp_services.gen.tori.sleep.v1 import sleep_pb2 as spb

ToolFn = Callable[..., Awaitable[dict[str, Any]]]

PUT_DESCRIPTION = """\
Store one episode (a moment of concept activity) in memory, or many at once with `episodes`.

Give the content as `episodeBlob` (text or JSON) with front-end `meta`, and/or the concept \
activity explicitly: `concepts` {conceptId: strength 0..1} (the usual way), `activation` \
(parallel lists) or `trace` (timed frames). Optional: `id` (your idempotency key), `tags`, \
`energy` (replay priority), `timestamp`, `source`, `embedding`, `metadata`. Writing costs \
milliseconds; nothing here calls a model. Returns each episode's id and whether it was `created` \
or already `existing`. A batch is stored all or nothing."""

GET_DESCRIPTION = """\
Fetch one stored episode by id: its concepts, tags, energy, tier (STM/MTM/LTM), whether sleep \
has consolidated it, and the episodeBlob it was stored with. `found` is false when no episode \
has that id (it may have expired)."""

STATS_DESCRIPTION = """\
How much is in memory: episode counts (total, consolidated, unconsolidated), size, tiers, oldest \
and newest; and, when those services answer, the concept graph (version, concepts, edges) and \
the Koopman learner's state. A section whose service does not answer says so instead of failing."""

KCL_DESCRIPTION = """\
The learned dynamics of concept activity: whether a model is ready, the most significant spectral \
modes (period in the stream's time unit, frequency in Hz, growth rate per second, persistence and \
significance, stability, dominant concepts with phase shifts), psi-drift (phase change of the \
dominant modes between fits, radians; above the threshold the rank rises), a summary of the \
oscillator couplings (count, status), and every named stream with its leading periods. `modes` \
limits how many modes are listed (most significant first; modes that are not significant are left \
out); `stream` lists the modes of a named stream instead of the default one."""


def _rpc_exists(descriptor: Any, service: str, method: str) -> bool:
    return method in descriptor.services_by_name[service].methods_by_name


AVAILABLE = {
    "put": _rpc_exists(vpb.DESCRIPTOR, "EpisodicVault", "PutEpisodes"),
    "get": _rpc_exists(vpb.DESCRIPTOR, "EpisodicVault", "GetEpisode"),
    "stats": _rpc_exists(vpb.DESCRIPTOR, "EpisodicVault", "GetStats"),
    "search": _rpc_exists(vpb.DESCRIPTOR, "EpisodicVault", "Search"),
    "recall": _rpc_exists(vpb.DESCRIPTOR, "EpisodicVault", "Recall"),
    "sleep": _rpc_exists(spb.DESCRIPTOR, "SleepScheduler", "StartConsolidation")
    and _rpc_exists(spb.DESCRIPTOR, "SleepScheduler", "GetConsolidationStatus"),
    "prune": _rpc_exists(ppb.DESCRIPTOR, "SparsePruner", "TriggerPruning")
    and _rpc_exists(ppb.DESCRIPTOR, "SparsePruner", "GetPruningStatus"),
    "kcl_status": _rpc_exists(kpb.DESCRIPTOR, "KoopmanLearner", "GetKclStats")
    and _rpc_exists(kpb.DESCRIPTOR, "KoopmanLearner", "GetSpectralModes"),
}


def _names(tool: str, style: str) -> list[str]:
    dotted, underscore = f"memory.{tool}", f"memory_{tool}"
    return {"dotted": [dotted], "underscore": [underscore], "both": [dotted, underscore]}[style]


def _spec(gw: Gateway, service: str, method: str, deadline_key: str, idempotent: bool) -> CallSpec:
    deadline = getattr(CALL.get().snap.cfg.deadlines, deadline_key)
    return CallSpec(service, method, deadline, deadline_key, idempotent)


def _about(field: str) -> Any:
    """The put argument's Field, with EpisodeArg's description of the same field."""
    return Field(description=EpisodeArg.model_fields[field].description)


def build_put(gw: Gateway) -> ToolFn:
    async def put(
        episodeBlob: Annotated[
            str | dict[str, Any] | list[Any] | None,
            _about("episodeBlob"),
        ] = None,
        meta: Annotated[dict[str, Any] | None, _about("meta")] = None,
        concepts: Annotated[Concepts | None, Field(description=CONCEPTS_DOC)] = None,
        phases: Annotated[
            dict[str, float] | None,
            _about("phases"),
        ] = None,
        activation: Annotated[
            ActivationArg | None,
            _about("activation"),
        ] = None,
        trace: Annotated[list[FrameArg] | None, _about("trace")] = None,
        id: Annotated[str | None, _about("id")] = None,
        tags: Annotated[list[str] | None, _about("tags")] = None,
        energy: Annotated[float | None, _about("energy")] = None,
        refCount: Annotated[int | None, _about("refCount")] = None,
        timestamp: Annotated[str | float | None, _about("timestamp")] = None,
        source: Annotated[SourceArg | None, _about("source")] = None,
        embedding: Annotated[list[float] | None, _about("embedding")] = None,
        metadata: Annotated[
            dict[str, str] | None,
            _about("metadata"),
        ] = None,
        episodes: Annotated[
            list[EpisodeArg] | None,
            Field(
                description="Several episodes at once, each with the fields above; stored all "
                "or nothing. Do not combine with the single-episode fields."
            ),
        ] = None,
    ) -> dict[str, Any]:
        single = {
            k: v
            for k, v in dict(
                episodeBlob=episodeBlob, meta=meta, concepts=concepts, phases=phases,
                activation=activation, trace=trace, id=id, tags=tags, energy=energy,
                refCount=refCount, timestamp=timestamp, source=source, embedding=embedding,
                metadata=metadata,
            ).items()
            if v is not None
        }  # fmt: skip
        cfg = CALL.get().snap.cfg
        if episodes is not None:
            if single:
                raise GatewayToolError(
                    f"invalid argument `{sorted(single)[0]}`: give either `episodes` or one "
                    "episode's fields, not both. Nothing was done",
                    m.INVALID_ARGUMENT,
                )
            if not episodes:
                raise GatewayToolError(
                    "invalid argument `episodes`: is empty; give at least one episode. Nothing "
                    "was done",
                    m.INVALID_ARGUMENT,
                )
            if len(episodes) > cfg.max_batch:
                raise GatewayToolError(
                    f"invalid argument `episodes`: {len(episodes)} episodes; at most "
                    f"{cfg.max_batch} per call (gateway.max_batch). Split it. Nothing was done",
                    m.INVALID_ARGUMENT,
                )
            args = episodes
        else:
            if not single:
                raise GatewayToolError(
                    "invalid arguments: nothing to store; give `episodeBlob` and/or `concepts` "
                    "(or `episodes` for several). Nothing was done",
                    m.INVALID_ARGUMENT,
                )
            args = [EpisodeArg.model_validate(single)]
        protos = [
            episode_pb(a, f"episodes[{i}]." if episodes is not None else "")
            for i, a in enumerate(args)
        ]
        ids = [p.id for p in protos]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise GatewayToolError(
                f"invalid argument `episodes`: id {dup!r} appears twice; give each episode its "
                "own id. Nothing was done",
                m.INVALID_ARGUMENT,
            )
        # Ids are fixed before the first attempt, so a retried put repeats the same episodes.
        spec = _spec(gw, "episodic_vault", "PutEpisodes", "put_s", idempotent=True)
        resp = await gw.call(spec, None, stream=[vpb.PutEpisodeRequest(episode=p) for p in protos])
        results = [
            {"id": r.id, "status": vpb.PutStatus.Name(r.status).removeprefix("PUT_STATUS_").lower()}
            for r in resp.results
        ]
        out: dict[str, Any] = {
            "stored": len(results),
            "created": resp.created,
            "existing": resp.existing,
        }
        if episodes is None:
            out.update(results[0])
        else:
            out["results"] = results
        return out

    return put


def build_get(gw: Gateway) -> ToolFn:
    async def get(
        id: Annotated[str, Field(description="The episode's id, as memory.put returned it.")],
        includeBlob: Annotated[
            bool, Field(description="Include the episodeBlob (false: metadata only, smaller).")
        ] = True,
    ) -> dict[str, Any]:
        if not id.strip():
            raise GatewayToolError(
                "invalid argument `id`: is empty; give an id memory.put returned",
                m.INVALID_ARGUMENT,
            )
        spec = _spec(gw, "episodic_vault", "GetEpisode", "get_s", idempotent=True)
        try:
            resp = await gw.call(spec, vpb.GetEpisodeRequest(id=id))
        except GatewayToolError as exc:
            if "NOT_FOUND" in str(exc) or "no episode" in str(exc):
                return {"found": False, "id": id}
            raise
        return {"found": True, "episode": episode_json(resp.episode, bodies=includeBlob)}

    return get


async def _optional(fn: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    try:
        return await fn()
    except GatewayToolError as exc:
        return {"available": False, "error": str(exc)}


def build_stats(gw: Gateway) -> ToolFn:
    async def stats() -> dict[str, Any]:
        spec = _spec(gw, "episodic_vault", "GetStats", "stats_s", idempotent=True)
        v = await gw.call(spec, vpb.GetStatsRequest())
        out: dict[str, Any] = {
            "episodes": {
                "total": v.episode_count,
                "consolidated": v.consolidated_count,
                "unconsolidated": v.unconsolidated_count,
                "sizeBytes": v.size_bytes,
                "tiers": {
                    vpb.Tier.Name(t.tier).removeprefix("TIER_"): t.episode_count for t in v.tiers
                },
                "backend": v.backend,
            }
        }
        if v.episode_count:
            out["episodes"]["oldest"] = v.oldest.ToDatetime().isoformat() + "Z"
            out["episodes"]["newest"] = v.newest.ToDatetime().isoformat() + "Z"

        async def graph() -> dict[str, Any]:
            g = await gw.call(
                _spec(gw, "sleep_scheduler", "GetGraphStats", "stats_s", idempotent=True),
                spb.GetGraphStatsRequest(),
            )
            return {
                "available": True,
                "version": g.header.version,
                "concepts": g.header.concept_count,
                "edges": g.header.edge_count,
                "density": g.density,
                "prototypes": g.prototype_count,
            }

        async def kcl() -> dict[str, Any]:
            k = await gw.call(
                _spec(gw, "koopman_learner", "GetKclStats", "stats_s", idempotent=True),
                kpb.GetKclStatsRequest(),
            )
            return {
                "available": True,
                "modelReady": k.model_ready,
                "modes": k.mode_count,
                "psiDrift": k.psi_drift,
            }

        out["graph"] = await _optional(graph)
        out["dynamics"] = await _optional(kcl)
        return out

    return stats


def build_kcl_status(gw: Gateway) -> ToolFn:
    async def kcl_status(
        modes: Annotated[
            int,
            Field(
                ge=0,
                le=100,
                description="How many spectral modes to list, strongest first (0: none).",
            ),
        ] = 5,
        topConcepts: Annotated[
            int, Field(ge=1, le=20, description="Dominant concepts listed per mode.")
        ] = 3,
        stream: Annotated[
            str,
            Field(
                max_length=128,
                description="A named stream whose modes to list (empty: the default stream).",
            ),
        ] = "",
    ) -> dict[str, Any]:
        k = await gw.call(
            _spec(gw, "koopman_learner", "GetKclStats", "kcl_s", idempotent=True),
            kpb.GetKclStatsRequest(),
        )
        out: dict[str, Any] = {
            "modelReady": k.model_ready,
            "modelVersion": k.model_version,
            "modeCount": k.mode_count,
            "rank": k.rank,
            "recommendedRank": k.recommended_rank,
            "conceptCount": k.concept_count,
            "psiDrift": k.psi_drift,
            "psiDriftThreshold": k.psi_drift_threshold,
            "stable": k.stable,
            "spectralRadius": k.spectral_radius,
            "predictionError": None
            if k.prediction_error != k.prediction_error
            else k.prediction_error,
            "couplings": {
                "status": kpb.CouplingStatus.Name(k.coupling_status).removeprefix(
                    "COUPLING_STATUS_"
                ),
                "count": k.coupling_count,
                "oscillators": k.oscillator_count,
                "updates": k.coupling_updates,
            },
            "snapshotsProcessed": k.snapshots_processed,
            "streams": [
                {
                    "stream": d.name,
                    "timeUnit": d.time_unit,
                    "dt": d.dt,
                    "delays": d.delays,
                    "modeCount": d.mode_count,
                    "periods": [
                        {"period": p.period, "significance": p.significance} for p in d.periods
                    ],
                }
                for d in k.streams
            ],
        }
        out["modes"] = []
        if modes and (k.model_ready or stream):
            sm = await gw.call(
                _spec(gw, "koopman_learner", "GetSpectralModes", "kcl_s", idempotent=True),
                kpb.GetSpectralModesRequest(
                    limit=modes, top_concepts=topConcepts, collapse_conjugates=True, stream=stream
                ),
            )
            out["timeUnit"] = sm.time_unit
            out["modes"] = [
                {
                    "period": md.period,
                    "significance": md.significance,
                    "persistence": md.persistence,
                    "frequencyHz": md.frequency_hz,
                    "growthRate": md.growth_rate,
                    "magnitude": md.magnitude,
                    "amplitude": md.amplitude,
                    "stable": md.stable,
                    "dominantConcepts": [
                        {"concept": d.concept_id, "weight": d.weight, "phaseShift": d.phase_shift}
                        for d in md.dominant_concepts
                    ],
                }
                for md in sm.modes
            ]
        return out

    return kcl_status


READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
CHANGES_GRAPH = ToolAnnotations(destructive_hint=True, open_world_hint=False)


from mcp_services.gateway.tools_graph import (  # noqa: E402
    PRUNE_DESCRIPTION,
    SLEEP_DESCRIPTION,
    build_prune,
    build_sleep,
)
from mcp_services.gateway.tools_recall import (  # noqa: E402
    RECALL_DESCRIPTION,
    SEARCH_DESCRIPTION,
    build_recall,
    build_search,
)


def register_tools(server: GatewayMCP, gw: Gateway, style: str) -> list[str]:
    """Register every available tool under the configured names; returns the names."""
    table: list[tuple[str, Callable[[Gateway], ToolFn], str, ToolAnnotations]] = [
        (
            "put",
            build_put,
            PUT_DESCRIPTION,
            ToolAnnotations(idempotent_hint=True, open_world_hint=False),
        ),
        ("get", build_get, GET_DESCRIPTION, READ_ONLY),
        ("search", build_search, SEARCH_DESCRIPTION, READ_ONLY),
        ("recall", build_recall, RECALL_DESCRIPTION, READ_ONLY),
        ("sleep", build_sleep, SLEEP_DESCRIPTION, CHANGES_GRAPH),
        ("prune", build_prune, PRUNE_DESCRIPTION, CHANGES_GRAPH),
        ("stats", build_stats, STATS_DESCRIPTION, READ_ONLY),
        ("kcl_status", build_kcl_status, KCL_DESCRIPTION, READ_ONLY),
    ]
    names: list[str] = []
    for tool, build, description, hints in table:
        if not AVAILABLE.get(tool, False):
            continue
        for name in _names(tool, style):
            server.add_tool(build(gw), name=name, description=description, annotations=hints)
            names.append(name)
    return names
