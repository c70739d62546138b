"""Validation of incoming episodes: every rule names the field and the fix.

validate_episode() turns a client's proto Episode into a domain Episode or raises InvalidEpisode.
Nothing is stored unless validation passed for the whole request.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from typing import NoReturn

import numpy as np
from ulid import ULID

from mcp_services.common.errors import InputError
from mcp_services.episodic_vault.domain.model import (
    NO_EMBEDDING,
    ConceptActivation,
    Embedding,
    Episode,
    Frame,
    Source,
    Tier,
)
from mcp_services.episodic_vault.rpc.codec import SERVER_FIELDS, client_content
from mcp_services.episodic_vault.settings import VaultConfig
from mcp_services.gen.tori.episodic.v1 import episodic_pb2

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
ID_RULE = "1-128 characters from A-Z a-z 0-9 . _ : -, starting with a letter or digit"
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
TWO_PI = 2.0 * math.pi
_SERVER_FIELD_NAMES = frozenset(SERVER_FIELDS)


class InvalidEpisode(InputError):
    """A field is invalid; `field` is its path in the request, e.g. episode.activation.phases[2].
    An InputError: one that escapes a servicer method is INVALID_ARGUMENT (common/rpc.py)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def check_id(value: str, field: str) -> str:
    if not ID_RE.fullmatch(value):
        raise InvalidEpisode(field, f"{value[:80]!r} is not a valid episode id; use {ID_RULE}")
    return value


def _check_text(value: str, field: str, max_len: int, what: str, *, allow_empty: bool) -> str:
    if not value and not allow_empty:
        raise InvalidEpisode(field, f"{what} is empty; give a non-empty value")
    if len(value) > max_len:
        raise InvalidEpisode(
            field, f"{what} is {len(value)} characters; the limit is {max_len}, shorten it"
        )
    if _CONTROL_RE.search(value):
        raise InvalidEpisode(field, f"{what} contains control characters; remove them")
    return value


def _check_activation(
    act: episodic_pb2.ConceptActivation, field: str, cfg: VaultConfig
) -> ConceptActivation:
    lim = cfg.limits
    n = len(act.concept_ids)
    if n > lim.max_concepts:
        raise InvalidEpisode(
            f"{field}.concept_ids",
            f"{n} concepts; the limit is {lim.max_concepts} (vault.limits.max_concepts), split the "
            "episode or raise the limit",
        )
    if len(act.strengths) != n:
        raise InvalidEpisode(
            f"{field}.strengths",
            f"has {len(act.strengths)} values for {n} concept_ids; give one strength per concept",
        )
    if act.phases and len(act.phases) != n:
        raise InvalidEpisode(
            f"{field}.phases",
            f"has {len(act.phases)} values for {n} concept_ids; give one phase per concept or none",
        )
    ids = list(act.concept_ids)
    strengths = list(act.strengths)
    phases = list(act.phases)
    # One pass over the whole activation (plain Python: numpy's per-call cost is more than a
    # loop over a few dozen values); only a bad one walks the items to name the field. NaN
    # fails every comparison, so it takes the slow path too.
    if not (
        len(set(ids)) == n
        and all(0 < len(c) <= lim.max_concept_id_len and not c.isspace() for c in ids)
        and not _CONTROL_RE.search("".join(ids))
        and all(0.0 <= x <= 1.0 for x in strengths)
        and all(-TWO_PI <= x <= TWO_PI for x in phases)
    ):
        _name_bad_item(act, field, cfg)
    return ConceptActivation(tuple(ids), tuple(strengths), tuple(phases))


def _name_bad_item(act: episodic_pb2.ConceptActivation, field: str, cfg: VaultConfig) -> NoReturn:
    """Raise InvalidEpisode for the first bad concept id, strength or phase."""
    lim = cfg.limits
    seen: set[str] = set()
    for i, cid in enumerate(act.concept_ids):
        f = f"{field}.concept_ids[{i}]"
        _check_text(cid, f, lim.max_concept_id_len, "concept id", allow_empty=False)
        if not cid.strip():
            raise InvalidEpisode(f, "concept id is blank; give a non-blank id")
        if cid in seen:
            raise InvalidEpisode(f, f"concept {cid!r} appears twice; list each concept once")
        seen.add(cid)
    for i, s in enumerate(act.strengths):
        if not math.isfinite(s) or not 0.0 <= s <= 1.0:
            raise InvalidEpisode(f"{field}.strengths[{i}]", f"{s} is not a finite value in [0, 1]")
    for i, p in enumerate(act.phases):
        if not math.isfinite(p) or not -TWO_PI <= p <= TWO_PI:
            raise InvalidEpisode(
                f"{field}.phases[{i}]", f"{p} is not a finite phase in radians in [-2pi, 2pi]"
            )
    raise AssertionError("the activation's summary check and its item checks disagree")


def _check_timestamp(ep: episodic_pb2.Episode, cfg: VaultConfig, now_ms: int) -> int:
    if not ep.HasField("timestamp"):
        return now_ms
    ts = ep.timestamp
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidEpisode("episode.timestamp.nanos", f"{ts.nanos} is not in [0, 999999999]")
    if ts.seconds < 0:
        raise InvalidEpisode("episode.timestamp", "is before 1970-01-01; send a real time or none")
    ts_ms = ts.seconds * 1000 + ts.nanos // 1_000_000
    skew_ms = int(cfg.limits.max_future_skew_s * 1000)
    if ts_ms > now_ms + skew_ms:
        ahead = (ts_ms - now_ms) / 1000
        raise InvalidEpisode(
            "episode.timestamp",
            f"is {ahead:.0f} s in the future; at most {cfg.limits.max_future_skew_s:.0f} s of "
            "clock "
            "skew is accepted (vault.limits.max_future_skew_s); check the client's clock",
        )
    return ts_ms


def _check_embedding(values: Sequence[float], cfg: VaultConfig) -> Embedding:
    if not values:
        return NO_EMBEDDING
    if cfg.embedding_dim == 0:
        raise InvalidEpisode(
            "episode.embedding",
            "this vault stores no embeddings (vault.embedding_dim is 0); omit it",
        )
    if len(values) != cfg.embedding_dim:
        raise InvalidEpisode(
            "episode.embedding",
            f"has {len(values)} values; this vault's embeddings have {cfg.embedding_dim} "
            "(vault.embedding_dim)",
        )
    # Vectorised: a Python loop over a 384-d embedding was most of the cost of validating a put.
    # float32 is the wire type, so the conversion is exact.
    arr = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite))
        raise InvalidEpisode(f"episode.embedding[{i}]", f"{values[i]} is not finite")
    if not arr.any():
        raise InvalidEpisode("episode.embedding", "is all zeros, which has no direction; omit it")
    return Embedding(arr)


def content_hash(ep: episodic_pb2.Episode) -> str:
    """SHA-256 of the client-given content (server-set fields excluded), deterministic encoding."""
    # Copying the message only to clear fields that are not set was most of this function's cost.
    if any(f.name in _SERVER_FIELD_NAMES for f, _ in ep.ListFields()):
        ep = client_content(ep)
    content = ep.SerializeToString(deterministic=True)
    return hashlib.sha256(content).hexdigest()


def validate_episode(
    ep: episodic_pb2.Episode, cfg: VaultConfig, now_ms: int, field: str = "episode"
) -> Episode:
    """The domain Episode for a client's proto, or InvalidEpisode naming the first bad field.

    A missing id gets a server-made ULID; a missing timestamp gets `now_ms`.
    """
    try:
        return _validate(ep, cfg, now_ms)
    except InvalidEpisode as exc:
        if field == "episode":
            raise
        # Re-root the path for batch requests: episodes[3].activation...
        raise InvalidEpisode(
            field + exc.field.removeprefix("episode"), str(exc).split(": ", 1)[1]
        ) from None


def _validate(ep: episodic_pb2.Episode, cfg: VaultConfig, now_ms: int) -> Episode:
    lim = cfg.limits
    episode_id = check_id(ep.id, "episode.id") if ep.id else str(ULID())
    ts_ms = _check_timestamp(ep, cfg, now_ms)

    if len(ep.tags) > lim.max_tags:
        raise InvalidEpisode(
            "episode.tags",
            f"{len(ep.tags)} tags; the limit is {lim.max_tags} (vault.limits.max_tags)",
        )
    tags: list[str] = []
    for i, tag in enumerate(ep.tags):
        _check_text(tag, f"episode.tags[{i}]", lim.max_tag_len, "tag", allow_empty=False)
        if tag not in tags:
            tags.append(tag)

    src = ep.source
    for name in ("type", "id", "user"):
        _check_text(
            getattr(src, name), f"episode.source.{name}", lim.max_source_field_len, "value",
            allow_empty=True,
        )  # fmt: skip

    if not math.isfinite(ep.energy) or ep.energy < 0:
        raise InvalidEpisode("episode.energy", f"{ep.energy} is not a finite value >= 0")
    if ep.ref_count < 0:
        raise InvalidEpisode("episode.ref_count", f"{ep.ref_count} is negative; use 0 or more")

    has_activation = ep.HasField("activation") and len(ep.activation.concept_ids) > 0
    if has_activation and len(ep.trace) > 0:
        raise InvalidEpisode(
            "episode.trace", "both activation and trace are set; send one or the other"
        )
    activation = _check_activation(ep.activation, "episode.activation", cfg)

    if len(ep.trace) > lim.max_trace_frames:
        raise InvalidEpisode(
            "episode.trace",
            f"{len(ep.trace)} frames; the limit is {lim.max_trace_frames} "
            "(vault.limits.max_trace_frames)",
        )
    frames: list[Frame] = []
    last_offset = 0
    for i, frame in enumerate(ep.trace):
        f = f"episode.trace[{i}]"
        if frame.offset_ms < last_offset:
            raise InvalidEpisode(
                f"{f}.offset_ms",
                f"{frame.offset_ms} is before the previous frame's; keep offsets "
                "non-decreasing and >= 0",
            )
        last_offset = frame.offset_ms
        frames.append(
            Frame(frame.offset_ms, _check_activation(frame.activation, f"{f}.activation", cfg))
        )

    if len(ep.payload) > lim.max_payload_bytes:
        raise InvalidEpisode(
            "episode.payload",
            f"is {len(ep.payload)} bytes; the limit is {lim.max_payload_bytes} "
            "(vault.limits.max_payload_bytes); store large blobs elsewhere and keep a reference",
        )
    embedding = _check_embedding(ep.embedding, cfg)

    if len(ep.metadata) > lim.max_metadata_entries:
        raise InvalidEpisode(
            "episode.metadata",
            f"{len(ep.metadata)} entries; the limit is {lim.max_metadata_entries} "
            "(vault.limits.max_metadata_entries)",
        )
    for key, value in ep.metadata.items():
        f = f"episode.metadata[{key[:40]!r}]"
        _check_text(key, f, lim.max_metadata_key_len, "key", allow_empty=False)
        if len(value) > lim.max_metadata_value_len:
            raise InvalidEpisode(
                f,
                f"value is {len(value)} characters; the limit is {lim.max_metadata_value_len} "
                "(vault.limits.max_metadata_value_len)",
            )

    return Episode(
        id=episode_id,
        timestamp_ms=ts_ms,
        tags=tuple(tags),
        source=Source(src.type, src.id, src.user),
        energy=float(ep.energy),
        ref_count=int(ep.ref_count),
        activation=activation,
        trace=tuple(frames),
        payload=bytes(ep.payload),
        embedding=embedding,
        metadata=tuple(sorted(ep.metadata.items())),
        tier=Tier.MTM,
        content_hash=content_hash(ep),
    )
