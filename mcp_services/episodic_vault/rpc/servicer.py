"""The EpisodicVault gRPC servicer: proto in, proto out, errors mapped to status codes.

Validation happens here before anything reaches storage; storage runs on worker threads. Status
codes (ERRORS below, common/rpc.py): INVALID_ARGUMENT (a field, named), NOT_FOUND, ALREADY_EXISTS
(id taken by other content), RESOURCE_EXHAUSTED (capacity, a full disk, stream bounds),
UNAVAILABLE (storage unreachable), FAILED_PRECONDITION (search off); anything else is INTERNAL
with an error id in the log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from mcp_services.common.event_bus import EPISODE_STORED, EventBus, new_header
from mcp_services.common.rpc import ErrorMap, abort
from mcp_services.common.stream_limits import StreamLimits, StreamRefused
from mcp_services.common.timestamps import ms_of_timestamp, timestamp_of_ms
from mcp_services.episodic_vault.adapters.storage import spool_directory
from mcp_services.episodic_vault.domain.backend import (
    BackendUnavailable,
    CapacityExceeded,
    IdConflict,
)
from mcp_services.episodic_vault.domain.completion import CueCompletion
from mcp_services.episodic_vault.domain.model import (
    Episode,
    EpisodeFilter,
    ListCursor,
    PutOutcome,
    PutStatus,
    Tier,
)
from mcp_services.episodic_vault.domain.spool import CHUNK as SPOOL_CHUNK
from mcp_services.episodic_vault.domain.spool import EpisodeSpool
from mcp_services.episodic_vault.domain.store import SearchDisabled
from mcp_services.episodic_vault.metrics import VaultMetrics
from mcp_services.episodic_vault.namespaces import ScopedStore
from mcp_services.episodic_vault.rpc.batch_stream import receive_batch
from mcp_services.episodic_vault.rpc.codec import episode_to_proto, outcome_to_proto
from mcp_services.episodic_vault.rpc.validation import InvalidEpisode, check_id, validate_episode
from mcp_services.episodic_vault.settings import VaultConfig, VaultLimits
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.events.v1 import events_pb2

T = TypeVar("T")
log = structlog.get_logger(__name__)

DEFAULT_PAGE_SIZE = 50
DEFAULT_K = 10
MAX_K = 1000
MAX_MARK_IDS = 10_000
MAX_PAGE_SIZE = 1000
SCAN_CHUNK = 500
SERVICE = "episodic-vault"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _filter_key(flt: EpisodeFilter) -> str:
    return hashlib.sha256(repr(flt).encode()).hexdigest()[:12]


def encode_page_token(cursor: ListCursor, flt: EpisodeFilter) -> str:
    raw = f"v1:{cursor.timestamp_ms}:{cursor.seq}:{_filter_key(flt)}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_page_token(token: str, flt: EpisodeFilter) -> ListCursor:
    """The cursor in `token`; InvalidEpisode naming page_token when it is malformed or foreign."""
    try:
        version, ts, seq, key = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        cursor = ListCursor(int(ts), int(seq))
    except (ValueError, UnicodeDecodeError):
        raise InvalidEpisode(
            "page_token", "is not a token this vault issued; pass next_page_token unchanged"
        ) from None
    if version != "v1" or key != _filter_key(flt):
        raise InvalidEpisode(
            "page_token",
            "was issued for a different filter; repeat the request with the filter it came with",
        )
    return cursor


# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_TS_MIN_S, _TS_MAX_S = -62_135_596_800, 253_402_300_799
# The longest TTL PurgeTTL accepts: 1000 years (beyond it the cutoff leaves int64 milliseconds).
_MAX_TTL_HOURS = 1000 * 365.25 * 24


def _checked_ms(ts: Timestamp, field: str) -> int:
    if not (_TS_MIN_S <= ts.seconds <= _TS_MAX_S and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidEpisode(
            field, "is outside the Timestamp range (years 1 to 9999, nanos 0..999999999)"
        )
    return ms_of_timestamp(ts)


def filter_from_proto(f: episodic_pb2.EpisodeFilter, limits: VaultLimits) -> EpisodeFilter:
    """The filter, checked: an episode carries at most ``limits.max_tags`` tags of at most
    ``max_tag_len`` characters, so a filter asking for more could match nothing and would only
    cost the backend (SQLite refuses a query with thousands of terms)."""
    if len(f.tags) > limits.max_tags:
        raise InvalidEpisode(
            "filter.tags",
            f"{len(f.tags)} tags; an episode carries at most {limits.max_tags}, so give at most "
            f"{limits.max_tags}",
        )
    if len(f.source_type) > limits.max_source_field_len:
        raise InvalidEpisode(
            "filter.source_type", f"is longer than {limits.max_source_field_len} characters"
        )
    since = _checked_ms(f.since, "filter.since") if f.HasField("since") else None
    until = _checked_ms(f.until, "filter.until") if f.HasField("until") else None
    if since is not None and until is not None and since >= until:
        raise InvalidEpisode("filter.until", "is not after filter.since; give an increasing range")
    if not math.isfinite(f.min_energy) or f.min_energy < 0:
        raise InvalidEpisode("filter.min_energy", f"{f.min_energy} is not a finite value >= 0")
    for i, tag in enumerate(f.tags):
        if not tag:
            raise InvalidEpisode(f"filter.tags[{i}]", "is empty; drop it or give a tag")
        if len(tag) > limits.max_tag_len:
            raise InvalidEpisode(
                f"filter.tags[{i}]", f"is longer than {limits.max_tag_len} characters"
            )
    return EpisodeFilter(tuple(f.tags), since, until, f.source_type, f.min_energy)


ERRORS = ErrorMap(
    {
        IdConflict: grpc.StatusCode.ALREADY_EXISTS,
        # A full disk (DiskFull) is one; _storage counts those from the backend.
        CapacityExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
        StreamRefused: grpc.StatusCode.RESOURCE_EXHAUSTED,
        # _storage words it: "the <backend> backend is unavailable (...); retry later".
        BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
        SearchDisabled: grpc.StatusCode.FAILED_PRECONDITION,
    }
)


@ERRORS.servicer
class EpisodicVaultServicer(episodic_pb2_grpc.EpisodicVaultServicer):
    def __init__(
        self,
        cfg: VaultConfig,
        backend: ScopedStore,  # the calling namespace's store, call by call
        executor: ThreadPoolExecutor,
        bus: EventBus,
        metrics: VaultMetrics,
        completer: CueCompletion,
    ) -> None:
        self._cfg = cfg
        self._backend = backend
        self._completer = completer
        self._executor = executor
        self._bus = bus
        self._metrics = metrics
        self._streams = StreamLimits(
            cfg.limits.max_concurrent_streams, cfg.limits.max_stream_bytes, "vault.limits"
        )
        self._spool_dir = spool_directory(cfg)

    async def _storage(
        self, context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: Any
    ) -> T:
        """Run a backend call on a worker thread; its errors go on to ERRORS, a capacity or an
        outage counted."""
        loop = asyncio.get_running_loop()
        op = getattr(fn, "__name__", "call").lstrip("_")
        start = time.perf_counter()
        try:
            result = await loop.run_in_executor(self._executor, fn, *args)
        except CapacityExceeded:
            self._metrics.op_errors.labels(op, self._backend.name).inc()
            raise
        except BackendUnavailable as exc:
            self._metrics.op_errors.labels(op, self._backend.name).inc()
            raise BackendUnavailable(
                f"the {self._backend.name} backend is unavailable ({exc}); retry later"
            ) from exc
        self._metrics.observe_op(op, time.perf_counter() - start)
        return result

    def _put_and_count(self, episodes: list[Episode]) -> tuple[list[PutOutcome], tuple[int, int]]:
        outcomes = self._backend.put_many(episodes, _now_ms())
        return outcomes, self._backend.totals()

    async def _put(
        self, context: grpc.aio.ServicerContext, episodes: list[Episode], kind: str
    ) -> list[PutOutcome]:
        start = time.perf_counter()
        outcomes, totals = await self._storage(context, self._put_and_count, episodes)
        self._metrics.observe_put(kind, time.perf_counter() - start, outcomes, totals)
        for ep, outcome in zip(episodes, outcomes, strict=True):
            if outcome.status is PutStatus.CREATED:
                self._announce(ep, outcome)
        return outcomes

    async def _put_spooled(
        self, context: grpc.aio.ServicerContext, spool: EpisodeSpool
    ) -> list[PutOutcome]:
        start = time.perf_counter()
        outcomes, totals = await self._storage(
            context, self._put_spooled_and_count, spool, _now_ms()
        )
        self._metrics.observe_put("batch", time.perf_counter() - start, outcomes, totals)
        loop = asyncio.get_running_loop()
        for begin in range(0, len(spool), SPOOL_CHUNK):
            chunk = await loop.run_in_executor(
                self._executor, spool.__getitem__, slice(begin, begin + SPOOL_CHUNK)
            )
            for ep, outcome in zip(chunk, outcomes[begin : begin + SPOOL_CHUNK], strict=True):
                if outcome.status is PutStatus.CREATED:
                    self._announce(ep, outcome)
        return outcomes

    def _put_spooled_and_count(
        self, spool: EpisodeSpool, stored_ms: int
    ) -> tuple[list[PutOutcome], tuple[int, int]]:
        return self._backend.put_spooled(spool, stored_ms), self._backend.totals()

    def _announce(self, ep: Episode, outcome: PutOutcome) -> None:
        concepts = len(ep.activation.concept_ids) + sum(
            len(f.activation.concept_ids) for f in ep.trace
        )
        self._bus.publish(
            EPISODE_STORED,
            events_pb2.EpisodeStored(
                header=new_header(SERVICE),
                episode_id=ep.id,
                seq=outcome.seq,
                timestamp=timestamp_of_ms(ep.timestamp_ms),
                tags=ep.tags,
                source_type=ep.source.type,
                concept_count=concepts,
                energy=ep.energy,
            ),
        )

    async def _invalid(self, context: grpc.aio.ServicerContext, exc: InvalidEpisode) -> NoReturn:
        self._metrics.rejected.labels(exc.field.split("[")[0].split(".")[-1]).inc()
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def PutEpisode(
        self, request: episodic_pb2.PutEpisodeRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.PutEpisodeResponse:
        if not request.HasField("episode"):
            await self._invalid(context, InvalidEpisode("episode", "is missing; set the episode"))
        try:
            ep = validate_episode(request.episode, self._cfg, _now_ms())
        except InvalidEpisode as exc:
            await self._invalid(context, exc)
        (outcome,) = await self._put(context, [ep], "unary")
        return episodic_pb2.PutEpisodeResponse(result=outcome_to_proto(outcome))

    async def PutEpisodes(
        self,
        request_iterator: AsyncIterator[episodic_pb2.PutEpisodeRequest],
        context: grpc.aio.ServicerContext,
    ) -> episodic_pb2.PutEpisodesResponse:
        # Bounded (batch_stream.py): a slot among max_concurrent_streams, max_stream_bytes, and
        # the batch spooled to disk until the client half-closes; then one atomic write. Over a
        # bound (StreamRefused) or out of disk for the spool (DiskFull): RESOURCE_EXHAUSTED.
        with self._streams.open() as budget, EpisodeSpool(self._spool_dir) as spool:
            try:
                await receive_batch(
                    request_iterator, self._cfg, _now_ms(), budget, spool, self._executor
                )
            except InvalidEpisode as exc:
                await self._invalid(context, exc)
            outcomes = await self._put_spooled(context, spool) if len(spool) else []
        created = sum(o.status is PutStatus.CREATED for o in outcomes)
        return episodic_pb2.PutEpisodesResponse(
            results=[outcome_to_proto(o) for o in outcomes],
            created=created,
            existing=len(outcomes) - created,
        )

    async def GetEpisode(
        self, request: episodic_pb2.GetEpisodeRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.GetEpisodeResponse:
        try:
            check_id(request.id, "id")
        except InvalidEpisode as exc:
            await self._invalid(context, exc)
        start = time.perf_counter()
        ep = await self._storage(context, self._backend.get, request.id)
        self._metrics.get_seconds.observe(time.perf_counter() - start)
        if ep is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no episode with id {request.id!r}")
        return episodic_pb2.GetEpisodeResponse(episode=episode_to_proto(ep))

    async def ListRecent(
        self, request: episodic_pb2.ListRecentRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.ListRecentResponse:
        try:
            size = request.page_size or DEFAULT_PAGE_SIZE
            if not 1 <= size <= MAX_PAGE_SIZE:
                raise InvalidEpisode(
                    "page_size", f"{request.page_size} is not in 1..{MAX_PAGE_SIZE} (0 means 50)"
                )
            flt = filter_from_proto(request.filter, self._cfg.limits)
            after = decode_page_token(request.page_token, flt) if request.page_token else None
        except InvalidEpisode as exc:
            await self._invalid(context, exc)
        # One extra row tells whether another page exists without a second query.
        rows = await self._storage(context, self._backend.list_recent, flt, size + 1, after)
        page, more = rows[:size], len(rows) > size
        token = ""
        if more:
            last = page[-1]
            token = encode_page_token(ListCursor(last.timestamp_ms, last.seq), flt)
        return episodic_pb2.ListRecentResponse(
            episodes=[episode_to_proto(e) for e in page], next_page_token=token
        )

    async def Scan(
        self, request: episodic_pb2.ScanRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[episodic_pb2.ScanResponse]:
        if request.after_seq < 0:
            await self._invalid(context, InvalidEpisode("after_seq", "is negative; start at 0"))
        if request.limit < 0:
            await self._invalid(context, InvalidEpisode("limit", "is negative; 0 means no limit"))
        cursor, remaining = request.after_seq, request.limit or math.inf
        while remaining > 0:
            chunk = int(min(SCAN_CHUNK, remaining))
            batch = await self._storage(
                context, self._backend.scan, cursor, chunk, request.only_unconsolidated
            )
            for ep in batch:
                yield episodic_pb2.ScanResponse(episode=episode_to_proto(ep))
            if len(batch) < chunk:
                return
            cursor = batch[-1].seq
            remaining -= len(batch)

    async def GetStats(
        self, request: episodic_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.GetStatsResponse:
        s = await self._storage(context, self._backend.stats)
        resp = episodic_pb2.GetStatsResponse(
            episode_count=s.episode_count,
            size_bytes=s.size_bytes,
            unconsolidated_count=s.unconsolidated_count,
            consolidated_count=s.consolidated_count,
            tiers=[
                episodic_pb2.TierStats(
                    tier=int(t.tier),  # type: ignore[arg-type]
                    episode_count=t.episode_count,
                    size_bytes=t.size_bytes,
                )
                for t in s.tiers
            ],
            last_seq=s.last_seq,
            backend=self._backend.name,
        )
        if s.oldest_ms is not None:
            resp.oldest.CopyFrom(timestamp_of_ms(s.oldest_ms))
        if s.newest_ms is not None:
            resp.newest.CopyFrom(timestamp_of_ms(s.newest_ms))
        return resp

    async def PurgeTTL(
        self, request: episodic_pb2.PurgeTTLRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.PurgeTTLResponse:
        if not (math.isfinite(request.ttl_hours) and 0 <= request.ttl_hours <= _MAX_TTL_HOURS):
            await self._invalid(
                context,
                InvalidEpisode(
                    "ttl_hours",
                    f"{request.ttl_hours} is not a value in [0, {_MAX_TTL_HOURS:.0f}] (1000 years)",
                ),
            )
        if request.keep_ref_count < 0:
            await self._invalid(
                context, InvalidEpisode("keep_ref_count", "is negative; use 0 for the default")
            )
        ttl_h = request.ttl_hours or self._cfg.ttl_hours
        keep = request.keep_ref_count or self._cfg.ttl_keep_ref_count
        cutoff = _now_ms() - int(ttl_h * 3_600_000)
        purged = await self._storage(
            context, self._backend.purge_expired, cutoff, keep, request.dry_run
        )
        if not request.dry_run:
            totals = await self._storage(context, self._backend.totals)
            self._metrics.set_totals(totals)
            log.info("purged", episodes=purged, ttl_hours=ttl_h, keep_ref_count=keep)
        return episodic_pb2.PurgeTTLResponse(
            purged=purged, dry_run=request.dry_run, cutoff=timestamp_of_ms(cutoff)
        )

    async def DeleteEpisode(
        self, request: episodic_pb2.DeleteEpisodeRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.DeleteEpisodeResponse:
        try:
            check_id(request.id, "id")
        except InvalidEpisode as exc:
            await self._invalid(context, exc)
        deleted = await self._storage(context, self._backend.delete, request.id)
        if deleted:
            self._metrics.set_totals(await self._storage(context, self._backend.totals))
        return episodic_pb2.DeleteEpisodeResponse(deleted=deleted)

    async def MarkConsolidated(
        self, request: episodic_pb2.MarkConsolidatedRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.MarkConsolidatedResponse:
        try:
            n = len(request.episode_ids)
            if not 1 <= n <= MAX_MARK_IDS:
                raise InvalidEpisode(
                    "episode_ids",
                    f"holds {n} ids; send 1..{MAX_MARK_IDS} per call (split larger sets)",
                )
            for i, episode_id in enumerate(request.episode_ids):
                check_id(episode_id, f"episode_ids[{i}]")
            if request.graph_version <= 0:
                raise InvalidEpisode(
                    "graph_version",
                    f"{request.graph_version} is not > 0; pass the version of the committed graph",
                )
        except InvalidEpisode as exc:
            await self._invalid(context, exc)
        out = await self._storage(
            context,
            self._backend.mark_consolidated,
            list(request.episode_ids),
            request.graph_version,
        )
        log.info(
            "marked_consolidated",
            marked=out.marked,
            already=out.already,
            missing=len(out.missing),
            graph_version=request.graph_version,
        )
        return episodic_pb2.MarkConsolidatedResponse(
            marked=out.marked, already=out.already, missing=out.missing
        )

    def _retrieval_args(
        self, k: int, flt: episodic_pb2.EpisodeFilter, tier: int
    ) -> tuple[int, EpisodeFilter, Tier]:
        k = k or DEFAULT_K
        if not 1 <= k <= MAX_K:
            raise InvalidEpisode("k", f"{k} is not in 1..{MAX_K} (0 means {DEFAULT_K})")
        if tier not in {int(t) for t in Tier}:
            raise InvalidEpisode("tier", f"{tier} is not a tier; use TIER_STM, _MTM, _LTM or 0")
        return k, filter_from_proto(flt, self._cfg.limits), Tier(tier)

    def _hit_episode(self, ep: Episode, omit_bodies: bool) -> episodic_pb2.Episode:
        msg = episode_to_proto(ep)
        if omit_bodies:
            msg.ClearField("payload")
            msg.ClearField("embedding")
        return msg

    async def Search(
        self, request: episodic_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.SearchResponse:
        if self._backend.index is None:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "semantic search is off in this deployment (vault.index.enabled is false or "
                "vault.embedding_dim is 0)",
            )
        try:
            k, flt, tier = self._retrieval_args(request.k, request.filter, request.tier)
            dim = self._cfg.embedding_dim
            if len(request.embedding) != dim:
                raise InvalidEpisode(
                    "embedding",
                    f"has {len(request.embedding)} values; this vault's embeddings have {dim} "
                    "(vault.embedding_dim)",
                )
            q = np.asarray(request.embedding, np.float64)
            if not np.isfinite(q).all():
                i = int(np.argmin(np.isfinite(q)))
                raise InvalidEpisode(f"embedding[{i}]", f"{request.embedding[i]} is not finite")
            if not q.any():
                raise InvalidEpisode("embedding", "is all zeros, which has no direction")
        except InvalidEpisode as exc:
            await self._invalid(context, exc)
        hits, exact, size = await self._storage(
            context, self._backend.search, list(request.embedding), k, flt, tier
        )
        return episodic_pb2.SearchResponse(
            hits=[
                episodic_pb2.SearchHit(
                    episode=self._hit_episode(h.episode, request.omit_bodies), score=h.score
                )
                for h in hits
            ],
            exact=exact,
            index_size=size,
        )

    def _cue(self, act: episodic_pb2.ConceptActivation) -> dict[str, float]:
        n = len(act.concept_ids)
        limit = self._cfg.limits.max_concepts
        if not 1 <= n <= limit:
            raise InvalidEpisode(
                "cue.concept_ids",
                f"holds {n} concepts; give 1..{limit} (vault.limits.max_concepts)",
            )
        if len(act.strengths) != n:
            raise InvalidEpisode(
                "cue.strengths",
                f"has {len(act.strengths)} values for {n} concept_ids; give one strength each",
            )
        cue: dict[str, float] = {}
        for i, (cid, st) in enumerate(zip(act.concept_ids, act.strengths, strict=True)):
            if not cid.strip():
                raise InvalidEpisode(f"cue.concept_ids[{i}]", "is blank; give a concept id")
            if cid in cue:
                raise InvalidEpisode(f"cue.concept_ids[{i}]", f"{cid!r} appears twice")
            if not math.isfinite(st) or not 0.0 < st <= 1.0:
                raise InvalidEpisode(f"cue.strengths[{i}]", f"{st} is not a finite value in (0, 1]")
            cue[cid] = float(st)
        return cue

    async def Recall(
        self, request: episodic_pb2.RecallRequest, context: grpc.aio.ServicerContext
    ) -> episodic_pb2.RecallResponse:
        try:
            k, flt, tier = self._retrieval_args(request.k, request.filter, request.tier)
            cue = self._cue(request.cue)
        except InvalidEpisode as exc:
            await self._invalid(context, exc)
        done = await self._completer.complete(cue, not request.no_completion)
        self._metrics.completion.labels(done.status.name.lower()).inc()
        hits = await self._storage(context, self._backend.recall, done.cue, k, flt, tier)
        return episodic_pb2.RecallResponse(
            hits=[
                episodic_pb2.RecallHit(
                    episode=self._hit_episode(h.episode, request.omit_bodies),
                    score=h.score,
                    matched_concepts=h.matched,
                )
                for h in hits
            ],
            completion=episodic_pb2.Completion.ValueType(int(done.status)),
            completion_detail=done.detail,
            effective_cue=episodic_pb2.ConceptActivation(
                concept_ids=list(done.cue), strengths=list(done.cue.values())
            ),
            graph_version=done.graph_version,
        )
