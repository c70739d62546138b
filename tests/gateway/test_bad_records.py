"""One malformed record never breaks a read: an episode written straight over gRPC whose payload
claims to be JSON (or text) but is not comes back as base64 with a note, through memory.get,
memory.search and memory.recall alike, and the other hits still come back."""

from __future__ import annotations

import json

from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vpb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from tests.gateway.conftest import KEY_A, Stack, call, text


def _put(stack: Stack, eid: str, payload: bytes, kind: str) -> None:
    stub = episodic_pb2_grpc.EpisodicVaultStub(stack.vault.channel)
    stub.PutEpisode(
        vpb.PutEpisodeRequest(
            episode=vpb.Episode(
                id=eid,
                source=vpb.Source(type="grpc"),
                activation=vpb.ConceptActivation(concept_ids=["concept:x"], strengths=[1.0]),
                embedding=[1.0] * 8,
                payload=payload,
                metadata={"gateway.blob": kind},
            )
        ),
        timeout=5,
    )


class TestBadRecords:
    def test_an_undecodable_blob_comes_back_as_base64_with_a_note(self, stack: Stack) -> None:
        """get, search and recall with includeBlob answer; the bad payload is base64, the good
        one decoded."""
        _put(stack, "bad-json", b"\xff{not json", "json")
        _put(stack, "bad-text", b"\xff\xfe", "text")
        _put(stack, "good", b'{"ok": true}', "json")
        url = stack.gateway().url
        got = json.loads(text(call(url, KEY_A, "memory.get", {"id": "bad-json"})))
        ep = got["episode"]
        assert "episodeBlob" not in ep and ep["payloadBase64"] == "/3tub3QganNvbg=="
        assert "not valid JSON" in ep["payloadNote"]
        args = {"embedding": [1.0] * 8, "k": 5, "includeBlob": True}
        found = json.loads(text(call(url, KEY_A, "memory.search", args)))
        by_id = {h["episode"]["id"]: h["episode"] for h in found["hits"]}
        assert set(by_id) == {"bad-json", "bad-text", "good"}
        assert by_id["good"]["episodeBlob"] == {"ok": True}
        assert "not valid UTF-8 text" in by_id["bad-text"]["payloadNote"]
        recalled = call(
            url, KEY_A, "memory.recall",
            {"concepts": {"concept:x": 1.0}, "includeBlob": True, "complete": False},
        )  # fmt: skip
        assert not recalled.is_error, text(recalled)
        hits = json.loads(text(recalled))["hits"]
        assert {h["episode"]["id"] for h in hits} == {"bad-json", "bad-text", "good"}
