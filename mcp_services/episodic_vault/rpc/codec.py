"""Conversions at the edge: domain Episode <-> proto (the stored body encoding built on them is
adapters/body.py)."""

from __future__ import annotations

from typing import Literal

from mcp_services.common.timestamps import timestamp_of_ms
from mcp_services.episodic_vault.domain.model import (
    ConceptActivation,
    Episode,
    PutOutcome,
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


def _activation_to_proto(a: ConceptActivation) -> episodic_pb2.ConceptActivation:
    return episodic_pb2.ConceptActivation(
        concept_ids=a.concept_ids, strengths=a.strengths, phases=a.phases
    )


def activation_from_proto(a: episodic_pb2.ConceptActivation) -> ConceptActivation:
    return ConceptActivation(tuple(a.concept_ids), tuple(a.strengths), tuple(a.phases))


def content_to_proto(ep: Episode, *, embedding: bool = True) -> episodic_pb2.Episode:
    """The client-visible content, without server-side state (and without the embedding when
    `embedding` is false)."""
    msg = episodic_pb2.Episode(
        id=ep.id,
        timestamp=timestamp_of_ms(ep.timestamp_ms),
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
    msg.stored_at.CopyFrom(timestamp_of_ms(ep.stored_ms))
    msg.seq = ep.seq
    msg.content_hash = ep.content_hash
    msg.graph_version = ep.graph_version
    return msg


def outcome_to_proto(o: PutOutcome) -> episodic_pb2.PutResult:
    return episodic_pb2.PutResult(
        id=o.id,
        status=episodic_pb2.PutStatus.ValueType(int(o.status)),
        seq=o.seq,
        content_hash=o.content_hash,
    )
