"""memory.search (nearest by embedding) and memory.recall (episodes for a concept cue)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from mcp_services.gateway.backends import CallSpec
from mcp_services.gateway.convert import (
    CONCEPTS_DOC,
    ArgumentError,
    Concepts,
    activation_json,
    activation_pb,
    episode_json,
    timestamp_pb,
)
from mcp_services.gateway.core import CALL, Gateway
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vpb

SEARCH_DESCRIPTION = (
    "Find the k stored episodes most similar to a query embedding (cosine similarity, highest "
    "first). The embedding must have the deployment's dimension (the same vectors you gave "
    "memory.put). Narrow with tags, a time range (since/until), sourceType, minEnergy or tier. "
    "Episodes come without their episodeBlob unless includeBlob is true; fetch one with "
    "memory.get."
)
RECALL_DESCRIPTION = (
    "Recall the episodes that best match a concept cue, e.g. {'concept:dog': 1, 'concept:park': "
    "0.7}: ranked by strength-weighted overlap (0..1). By default the cue is first completed "
    "through the consolidated concept graph (what sleep learned), so related concepts that were "
    "not in the cue also count; `complete: false` ranks by the cue as given. The reply says "
    "whether completion was applied and the effective cue. Same filters as memory.search."
)

Tier = Literal["STM", "MTM", "LTM"]


def _filter(
    tags: list[str] | None,
    since: str | float | None,
    until: str | float | None,
    source_type: str | None,
    min_energy: float | None,
) -> vpb.EpisodeFilter:
    f = vpb.EpisodeFilter(tags=tags or [], source_type=source_type or "")
    if since is not None:
        f.since.CopyFrom(timestamp_pb(since, "since"))
    if until is not None:
        f.until.CopyFrom(timestamp_pb(until, "until"))
    if min_energy is not None:
        if min_energy < 0:
            raise ArgumentError("minEnergy", f"{min_energy} is negative; give 0 or more")
        f.min_energy = min_energy
    return f


def _tier(tier: Tier | None) -> int:
    return vpb.TIER_UNSPECIFIED if tier is None else int(vpb.Tier.Value(f"TIER_{tier}"))


K = Annotated[int, Field(ge=1, le=1000, description="How many episodes to return, 1-1000.")]
TAGS = Annotated[list[str] | None, Field(description="Only episodes carrying every one of these.")]
SINCE = Annotated[
    str | float | None,
    Field(description="Only episodes at or after this time (ISO 8601 or Unix milliseconds)."),
]
UNTIL = Annotated[
    str | float | None,
    Field(description="Only episodes before this time (ISO 8601 or Unix milliseconds)."),
]
SOURCE = Annotated[str | None, Field(description="Only episodes whose source.type is this.")]
MIN_ENERGY = Annotated[float | None, Field(description="Only episodes with energy >= this.")]
TIER = Annotated[Tier | None, Field(description="Only this tier: STM, MTM or LTM (consolidated).")]
BLOB = Annotated[bool, Field(description="Include each episode's episodeBlob (larger replies).")]


def build_search(gw: Gateway) -> Any:
    async def search(
        embedding: Annotated[
            list[float], Field(description="The query vector, of the deployment's dimension.")
        ],
        k: K = 10,
        tags: TAGS = None,
        since: SINCE = None,
        until: UNTIL = None,
        sourceType: SOURCE = None,
        minEnergy: MIN_ENERGY = None,
        tier: TIER = None,
        includeBlob: BLOB = False,
    ) -> dict[str, Any]:
        if not embedding:
            raise ArgumentError("embedding", "is empty; give the query vector")
        req = vpb.SearchRequest(
            embedding=embedding,
            k=k,
            filter=_filter(tags, since, until, sourceType, minEnergy),
            tier=_tier(tier),  # type: ignore[arg-type]
            omit_bodies=not includeBlob,
        )
        deadline = CALL.get().snap.cfg.deadlines.search_s
        resp = await gw.call(CallSpec("episodic_vault", "Search", deadline, "search_s", True), req)
        return {
            "hits": [
                {"score": round(h.score, 6), "episode": episode_json(h.episode, bodies=includeBlob)}
                for h in resp.hits
            ],
            "exact": resp.exact,
            "indexSize": resp.index_size,
        }

    return search


def build_recall(gw: Gateway) -> Any:
    async def recall(
        concepts: Annotated[Concepts, Field(description="The cue. " + CONCEPTS_DOC)],
        k: K = 10,
        complete: Annotated[
            bool,
            Field(description="Complete the cue through the consolidated graph first (default)."),
        ] = True,
        tags: TAGS = None,
        since: SINCE = None,
        until: UNTIL = None,
        sourceType: SOURCE = None,
        minEnergy: MIN_ENERGY = None,
        tier: TIER = None,
        includeBlob: BLOB = False,
    ) -> dict[str, Any]:
        cue = activation_pb(concepts, None, "concepts")
        req = vpb.RecallRequest(
            cue=cue,
            k=k,
            filter=_filter(tags, since, until, sourceType, minEnergy),
            tier=_tier(tier),  # type: ignore[arg-type]
            no_completion=not complete,
            omit_bodies=not includeBlob,
        )
        deadline = CALL.get().snap.cfg.deadlines.recall_s
        resp = await gw.call(CallSpec("episodic_vault", "Recall", deadline, "recall_s", True), req)
        return {
            "hits": [
                {
                    "score": round(h.score, 6),
                    "matchedConcepts": list(h.matched_concepts),
                    "episode": episode_json(h.episode, bodies=includeBlob),
                }
                for h in resp.hits
            ],
            "completion": vpb.Completion.Name(resp.completion).removeprefix("COMPLETION_"),
            "completionDetail": resp.completion_detail,
            "effectiveCue": activation_json(resp.effective_cue)["concepts"],
            "graphVersion": resp.graph_version,
        }

    return recall
