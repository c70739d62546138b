"""Tool arguments (JSON, camelCase) to service requests (protos), and replies back to JSON.

The argument models are also the tools' input schemas: every field has a description a model can
act on. Checks that need more than a type (ranges, shapes, conflicts) raise ArgumentError naming
the argument path as the caller wrote it (e.g. concepts['concept:dog']) and the fix.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ulid import ULID

from mcp_services.common.timestamps import timestamp_of_ms
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vpb

# Marks an episode's payload as the gateway's episodeBlob, and how to give it back.
BLOB_KEY = "gateway.blob"
TWO_PI = 2 * math.pi


class ArgumentError(ValueError):
    """A tool argument is unusable: `path` as the caller wrote it, and the problem with its fix."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"argument `{path}`: {problem}")
        self.path = path


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActivationArg(_Args):
    """Concept activity as parallel lists (the proto's shape)."""

    conceptIds: list[str] = Field(description="Concept ids, e.g. 'concept:dog'; each once.")
    strengths: list[float] = Field(description="One strength in [0, 1] per concept id.")
    phases: list[float] | None = Field(
        default=None, description="Optional phase in radians per concept id, in [-2pi, 2pi]."
    )


class FrameArg(_Args):
    offsetMs: Annotated[int, Field(ge=0)] = Field(
        description="Milliseconds after the episode's timestamp; non-decreasing along the trace."
    )
    concepts: dict[str, float] = Field(description="Concept id -> strength in [0, 1].")


class SourceArg(_Args):
    type: str = Field(default="", description="Kind of source, e.g. 'chat', 'sensor'.")
    id: str = Field(default="", description="The source's own id (conversation, device, ...).")
    user: str = Field(default="", description="The user the episode belongs to, if any.")


Concepts = dict[str, float] | list[str]

CONCEPTS_DOC = (
    "The concepts active in this episode: an object mapping concept id to strength in [0, 1] "
    "(> 0.5 counts as active), e.g. {'concept:dog': 0.9, 'concept:park': 0.6}; or a list of ids, "
    "each taken at strength 1."
)


class EpisodeArg(_Args):
    """One episode, in the front-end's shape ({episodeBlob, meta}) and/or with explicit fields."""

    episodeBlob: str | dict[str, Any] | list[Any] | None = Field(
        default=None,
        description="The episode's content as the front-end has it: text or any JSON value. "
        "Stored as is and given back by memory.get.",
    )
    meta: dict[str, Any] | None = Field(
        default=None,
        description="Front-end metadata. Keys named like the explicit fields here (id, tags, "
        "concepts, phases, activation, trace, energy, refCount, timestamp, source, embedding) "
        "are used as those fields; any other key is kept in `metadata` (non-text values as JSON).",
    )
    id: str | None = Field(
        default=None,
        description="Your id for idempotency (1-128 of A-Z a-z 0-9 . _ : -); putting the same id "
        "and content again changes nothing. Omitted: the gateway makes a time-sortable one.",
    )
    tags: list[str] | None = Field(default=None, description="Labels to filter by later.")
    concepts: Concepts | None = Field(default=None, description=CONCEPTS_DOC)
    phases: dict[str, float] | None = Field(
        default=None, description="Optional phase (radians) per concept id given in `concepts`."
    )
    activation: ActivationArg | None = Field(
        default=None, description="Concept activity as parallel lists; instead of `concepts`."
    )
    trace: list[FrameArg] | None = Field(
        default=None,
        description="A short timed sequence of activations; instead of `concepts`/`activation`.",
    )
    energy: float | None = Field(default=None, description="Replay priority, >= 0 (default 0).")
    refCount: int | None = Field(
        default=None, description="How often other memories refer to it; >= 3 survives expiry."
    )
    timestamp: str | float | None = Field(
        default=None,
        description="When it happened: ISO 8601 (e.g. '2026-01-31T12:00:00Z') or Unix "
        "milliseconds. Default: now.",
    )
    source: SourceArg | None = Field(default=None, description="Where the episode came from.")
    embedding: list[float] | None = Field(
        default=None,
        description="Optional vector for memory.search; exactly the deployment's dimension.",
    )
    metadata: dict[str, str] | None = Field(default=None, description="Text key -> text value.")


LIFTABLE = frozenset(EpisodeArg.model_fields) - {"episodeBlob", "meta", "metadata"}


def _reroot(exc: ValidationError, prefix: str) -> ArgumentError:
    err = exc.errors()[0]
    path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    given = err.get("input")
    shown = f" (got {json.dumps(given)[:80]})" if not isinstance(given, dict | list) else ""
    return ArgumentError(path.lstrip("."), f"{err['msg']}{shown}")


def lift_meta(arg: EpisodeArg, path: str) -> EpisodeArg:
    """Move meta's known keys onto the episode; the rest joins metadata as text."""
    if not arg.meta:
        return arg
    lifted = {k: v for k, v in arg.meta.items() if k in LIFTABLE}
    for k in lifted:
        if getattr(arg, k) is not None:
            raise ArgumentError(
                f"{path}meta.{k}", f"is also given as `{path}{k}`; give it in one place"
            )
    try:
        parsed = EpisodeArg.model_validate(lifted)
    except ValidationError as exc:
        raise _reroot(exc, f"{path}meta") from None
    extra = dict(arg.metadata or {})
    for k, v in arg.meta.items():
        if k in LIFTABLE:
            continue
        if k in extra:
            raise ArgumentError(f"{path}meta.{k}", f"is also in `{path}metadata`; keep one")
        extra[k] = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    update = {k: getattr(parsed, k) for k in lifted}
    return arg.model_copy(update={**update, "meta": None, "metadata": extra or None})


def _strength(path: str, s: float) -> float:
    if not math.isfinite(s) or not 0.0 <= s <= 1.0:
        raise ArgumentError(path, f"{s} is not a strength; give a number from 0 to 1")
    return s


def activation_pb(
    concepts: Concepts, phases: dict[str, float] | None, path: str
) -> vpb.ConceptActivation:
    if isinstance(concepts, list):
        concepts = {c: 1.0 for c in concepts}
    if not concepts:
        raise ArgumentError(path, "is empty; name at least one concept, or leave it out")
    ids = list(concepts)
    strengths = [_strength(f"{path}[{c!r}]", float(s)) for c, s in concepts.items()]
    ph: list[float] = []
    if phases:
        unknown = [c for c in phases if c not in concepts]
        if unknown:
            raise ArgumentError(
                f"phases[{unknown[0]!r}]", "names a concept that is not in `concepts`; add it there"
            )
        for c, p in phases.items():
            if not math.isfinite(p) or not -TWO_PI <= p <= TWO_PI:
                raise ArgumentError(
                    f"phases[{c!r}]", f"{p} is not a phase in radians in [-2pi, 2pi]"
                )
        ph = [float(phases.get(c, 0.0)) for c in ids]
    return vpb.ConceptActivation(concept_ids=ids, strengths=strengths, phases=ph)


def timestamp_pb(value: str | float, path: str) -> Timestamp:
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ArgumentError(
                path, f"{value[:40]!r} is not ISO 8601; write e.g. '2026-01-31T12:00:00Z'"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = int(dt.timestamp() * 1000)
    else:
        if not math.isfinite(value) or value < 0:
            raise ArgumentError(path, f"{value} is not Unix milliseconds (a number >= 0)")
        ms = int(value)
    return timestamp_of_ms(ms)


def episode_pb(arg: EpisodeArg, path: str = "") -> vpb.Episode:
    """The vault's Episode for one argument episode; the id is fixed here so retries repeat it."""
    arg = lift_meta(arg, path)
    given = [k for k in ("concepts", "activation", "trace") if getattr(arg, k) is not None]
    if len(given) > 1:
        raise ArgumentError(
            f"{path}{given[1]}", f"give concept activity once: `{given[0]}` is already set"
        )
    if arg.phases is not None and arg.concepts is None:
        raise ArgumentError(f"{path}phases", "only goes with `concepts`; add `concepts`")
    ep = vpb.Episode(id=arg.id or str(ULID()), tags=arg.tags or [])
    metadata = dict(arg.metadata or {})
    if arg.episodeBlob is not None:
        if isinstance(arg.episodeBlob, str):
            ep.payload = arg.episodeBlob.encode()
            metadata[BLOB_KEY] = "text"
        else:
            ep.payload = json.dumps(arg.episodeBlob, separators=(",", ":")).encode()
            metadata[BLOB_KEY] = "json"
    ep.metadata.update(metadata)
    if arg.concepts is not None:
        ep.activation.CopyFrom(activation_pb(arg.concepts, arg.phases, f"{path}concepts"))
    elif arg.activation is not None:
        a = arg.activation
        ep.activation.CopyFrom(
            vpb.ConceptActivation(
                concept_ids=a.conceptIds, strengths=a.strengths, phases=a.phases or []
            )
        )
    elif arg.trace is not None:
        for i, fr in enumerate(arg.trace):
            ep.trace.append(
                vpb.Frame(
                    offset_ms=fr.offsetMs,
                    activation=activation_pb(fr.concepts, None, f"{path}trace[{i}].concepts"),
                )
            )
    if arg.energy is not None:
        ep.energy = arg.energy
    if arg.refCount is not None:
        ep.ref_count = arg.refCount
    if arg.timestamp is not None:
        ep.timestamp.CopyFrom(timestamp_pb(arg.timestamp, f"{path}timestamp"))
    if arg.source is not None:
        ep.source.CopyFrom(vpb.Source(type=arg.source.type, id=arg.source.id, user=arg.source.user))
    if arg.embedding is not None:
        ep.embedding.extend(arg.embedding)
    return ep


def _iso(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def activation_json(a: vpb.ConceptActivation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "concepts": dict(zip(a.concept_ids, (round(s, 6) for s in a.strengths), strict=True))
    }
    if a.phases:
        out["phases"] = dict(zip(a.concept_ids, (round(p, 6) for p in a.phases), strict=True))
    return out


def _blob_json(payload: bytes, kind: str) -> dict[str, Any]:
    """The payload as it was put (JSON or text), else base64. A payload that says it is JSON or
    text but is not (written past the gateway, straight over gRPC) comes back as base64 with a
    note: one bad record never fails a read for every caller whose search hits it."""
    try:
        if kind == "json":
            return {"episodeBlob": json.loads(payload)}
        if kind == "text":
            return {"episodeBlob": payload.decode()}
    except (ValueError, RecursionError):  # JSON and UTF-8 errors are ValueErrors
        return {
            "payloadBase64": base64.b64encode(payload).decode(),
            "payloadNote": f"metadata says {BLOB_KEY}={kind}, but the payload is not valid "
            f"{'JSON' if kind == 'json' else 'UTF-8 text'}; returned as base64",
        }
    return {"payloadBase64": base64.b64encode(payload).decode()}


def episode_json(ep: vpb.Episode, *, bodies: bool = True) -> dict[str, Any]:
    """An episode as the tools give it back: camelCase, the episodeBlob as it was put."""
    metadata = dict(ep.metadata)
    blob_kind = metadata.pop(BLOB_KEY, "")
    out: dict[str, Any] = {
        "id": ep.id,
        "timestamp": _iso(ep.timestamp),
        "tags": list(ep.tags),
        "energy": ep.energy,
        "refCount": ep.ref_count,
        "tier": vpb.Tier.Name(ep.tier).removeprefix("TIER_"),
        "consolidated": ep.consolidated,
    }
    if ep.source.type or ep.source.id or ep.source.user:
        out["source"] = {"type": ep.source.type, "id": ep.source.id, "user": ep.source.user}
    if ep.activation.concept_ids:
        out.update(activation_json(ep.activation))
    if len(ep.trace):
        out["trace"] = [
            {"offsetMs": f.offset_ms, **activation_json(f.activation)} for f in ep.trace
        ]
    if metadata:
        out["metadata"] = metadata
    if bodies and ep.payload:
        out.update(_blob_json(ep.payload, blob_kind))
    if bodies and ep.embedding:
        out["embeddingDim"] = len(ep.embedding)
    return out
