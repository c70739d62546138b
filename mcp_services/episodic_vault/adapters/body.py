"""The stored body of an episode, shared by every backend.

Backends store an episode as an encoded body (the proto wire format of its client content, compact
and versioned with the API) plus indexed columns for the server-side state that changes (tier,
consolidated, ref_count) and for filtering. A record (the memory backend's snapshot) is the whole
Episode proto, server fields included.
"""

from __future__ import annotations

import numpy as np

from mcp_services.common.timestamps import ms_of_timestamp
from mcp_services.episodic_vault.domain.model import Embedding, Episode, Frame, Source, Tier
from mcp_services.episodic_vault.rpc.codec import (
    activation_from_proto,
    client_content,
    content_to_proto,
    episode_to_proto,
)
from mcp_services.gen.tori.episodic.v1 import episodic_pb2

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
        timestamp_ms=ms_of_timestamp(msg.timestamp),
        tags=tuple(msg.tags),
        source=Source(msg.source.type, msg.source.id, msg.source.user),
        energy=msg.energy,
        ref_count=ref_count,
        activation=activation_from_proto(msg.activation),
        trace=tuple(Frame(f.offset_ms, activation_from_proto(f.activation)) for f in msg.trace),
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


def encode_record(ep: Episode) -> bytes:
    """The whole episode, server fields included, in wire format."""
    return episode_to_proto(ep).SerializeToString()


def decode_record(data: bytes) -> Episode:
    """An episode from encode_record's bytes."""
    msg = episodic_pb2.Episode.FromString(data)
    return decode_body(
        client_content(msg).SerializeToString(deterministic=True),
        ref_count=msg.ref_count,
        tier=msg.tier,
        consolidated=msg.consolidated,
        stored_ms=ms_of_timestamp(msg.stored_at),
        seq=msg.seq,
        content_hash=msg.content_hash,
        graph_version=msg.graph_version,
    )
