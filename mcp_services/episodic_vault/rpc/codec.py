"""Conversions at the edge: domain Episode <-> proto, and the stored body encoding.

Backends store an episode as an encoded body (the proto wire format of its client content, compact
and versioned with the API) plus indexed columns for the server-side state that changes (tier,
consolidated, ref_count) and for filtering.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from mcp_services.episodic_vault.model import (
    ConceptActivation,
    Embedding,
    Episode,
    Frame,
    PutOutcome,
    Source,
    Tier,
)
from mcp_services.gen.tori.episodic.v1 import episodic_pb2

# Fields of tori.episodic.v1.Episode that the server sets; ignored on put, excluded from hashes.
SERVER_FIELDS: tuple[
    Literal["tier", "consolidated", "stored_at", "seq", "content_hash", "graph_version"], ...
] = ("tier", "consolidated", "stored_at", "seq", "content_hash", "graph_version")


def client_content(ep: episodic_pb2.Episode) -> episodic_pb2.Episode:
    """A copy of `ep` without the server-set fields."""
    out = episodic_pb2.Episode()
    out.CopyFrom(ep)
    for name in SERVER_FIELDS:
        out.ClearField(name)
    return out


def timestamp_from_ms(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def ms_from_timestamp(ts: Timestamp) -> int:
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


def _activation_to_proto(a: ConceptActivation) -> episodic_pb2.ConceptActivation:
    return episodic_pb2.ConceptActivation(
        concept_ids=a.concept_ids, strengths=a.strengths, phases=a.phases
    )


def _activation_from_proto(a: episodic_pb2.ConceptActivation) -> ConceptActivation:
    return ConceptActivation(tuple(a.concept_ids), tuple(a.strengths), tuple(a.phases))


def content_to_proto(ep: Episode, *, embedding: bool = True) -> episodic_pb2.Episode:
    """The client-visible content, without server-side state (and without the embedding when
    `embedding` is false)."""
    msg = episodic_pb2.Episode(
        id=ep.id,
        timestamp=timestamp_from_ms(ep.timestamp_ms),
        tags=ep.tags,
        source=episodic_pb2.Source(type=ep.source.type, id=ep.source.id, user=ep.source.user),
        energy=ep.energy,
        ref_count=ep.ref_count,
        trace=[
            episodic_pb2.Frame(offset_ms=f.offset_ms, activation=_activation_to_proto(f.activation))
            for f in ep.trace
        ],
        payload=ep.payload,
        embedding=ep.embedding.tolist() if embedding else (),
        metadata=dict(ep.metadata),
    )
    if ep.activation.concept_ids:
        msg.activation.CopyFrom(_activation_to_proto(ep.activation))
    return msg


def episode_to_proto(ep: Episode) -> episodic_pb2.Episode:
    msg = content_to_proto(ep)
    msg.tier = int(ep.tier)  # type: ignore[assignment]
    msg.consolidated = ep.consolidated
    msg.stored_at.CopyFrom(timestamp_from_ms(ep.stored_ms))
    msg.seq = ep.seq
    msg.content_hash = ep.content_hash
    msg.graph_version = ep.graph_version
    return msg


# The key of Episode.embedding as a packed field (field number, wire type 2).
_EMBEDDING_KEY = bytes(
    [episodic_pb2.Episode.DESCRIPTOR.fields_by_name["embedding"].number << 3 | 2]
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_body(ep: Episode) -> bytes:
    """The Episode proto of the client content, in wire format. The embedding is appended as
    the packed field it is on the wire (little-endian float32s) straight from its bytes: going
    through a list of Python floats was a third of the cost. A parser reads fields in any order,
    so the body decodes to the same message."""
    body = content_to_proto(ep, embedding=False).SerializeToString(deterministic=True)
    if not ep.embedding:
        return body
    raw = ep.embedding.array().astype("<f4", copy=False).tobytes()
    return body + _EMBEDDING_KEY + _varint(len(raw)) + raw


def decode_body(
    body: bytes,
    *,
    ref_count: int,
    tier: int,
    consolidated: bool,
    stored_ms: int,
    seq: int,
    content_hash: str,
    graph_version: int = 0,
) -> Episode:
    """A domain Episode from a stored body and its server-side columns."""
    msg = episodic_pb2.Episode.FromString(body)
    return Episode(
        id=msg.id,
        timestamp_ms=ms_from_timestamp(msg.timestamp),
        tags=tuple(msg.tags),
        source=Source(msg.source.type, msg.source.id, msg.source.user),
        energy=msg.energy,
        ref_count=ref_count,
        activation=_activation_from_proto(msg.activation),
        trace=tuple(Frame(f.offset_ms, _activation_from_proto(f.activation)) for f in msg.trace),
        payload=msg.payload,
        embedding=Embedding(np.asarray(msg.embedding, np.float32)),
        metadata=tuple(sorted(msg.metadata.items())),
        tier=Tier(tier),
        consolidated=consolidated,
        stored_ms=stored_ms,
        seq=seq,
        content_hash=content_hash,
        size_bytes=len(body),
        graph_version=graph_version,
    )


def outcome_to_proto(o: PutOutcome) -> episodic_pb2.PutResult:
    return episodic_pb2.PutResult(
        id=o.id,
        status=episodic_pb2.PutStatus.ValueType(int(o.status)),
        seq=o.seq,
        content_hash=o.content_hash,
    )
