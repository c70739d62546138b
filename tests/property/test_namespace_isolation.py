"""Namespace isolation as a property: whatever tenant B sends, it learns nothing of the others.

Tenant alice (namespace alice) and a tenant-less key (namespace default, whose episodes the
scheduler consolidates into its graph) store episodes through the real gateway, each with a
vocabulary of its own: ids, concepts, tags, payloads and metadata values that name their owner.
Half of that vocabulary is offered to the generators of tenant bob's inputs (so bob asks for the
others' ids, cues with their concepts, filters by their tags, searches near their embeddings);
the other half, and every payload and metadata value, bob is never given. The properties, over
every MCP tool (as bob, through the gateway) and every RPC of every service (as namespace bob,
directly): no reply, error text or metric label bob can read holds a token bob was not given or
did not send in that very request; and bob's writes, deletes, marks, purges, consolidations,
graph commits, prunings, rollbacks and learner updates change nothing of the others'.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx2
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_services.gateway.app import GatewayThread
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as vpb
from mcp_services.gen.tori.sleep.v1 import sleep_pb2 as spb
from tests.conftest import free_ports
from tests.property.fleet import CALL_TIMEOUT_S, METHODS, Fleet, Target
from tests.property.strategies import messages

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "50"))
ALICE_KEY = "tori_property_alice_0123456789ab"
BOB_KEY = "tori_property_bob_000123456789ab"
PLAIN_KEY = "tori_property_plain_0123456789ab"
BOB_MD = (("x-tori-namespace", "bob"),)
# A crash or an unhandled error in the namespaced servicers.
CRASHES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
DIM = 8
N_EPISODES = 12
TOKEN = re.compile(r"[A-Za-z0-9_.:-]+")
COMMON = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass
class Vocab:
    """One owner's words; `offered` may reach bob's generators, `secret` never does."""

    owner: str
    ids: list[str] = field(init=False)
    concepts: list[str] = field(init=False)
    tags: list[str] = field(init=False)
    vectors: list[list[float]] = field(init=False)

    def __post_init__(self) -> None:
        o = self.owner
        self.ids = [f"{o}-ep-{i}" for i in range(N_EPISODES)]
        self.concepts = [f"concept:{o}-{j}" for j in range(10)]
        self.tags = [f"{o}-tag-{k}" for k in range(4)]
        rng = random.Random(o)
        self.vectors = [[rng.uniform(-1, 1) for _ in range(DIM)] for _ in range(N_EPISODES)]

    def episode(self, i: int) -> dict[str, Any]:
        return {
            "id": self.ids[i],
            # One offered and one secret concept each, so completion or a hit would show one.
            "concepts": {self.concepts[i % 5]: 0.9, self.concepts[5 + i % 5]: 0.8},
            "tags": [self.tags[i % 2], self.tags[2 + i % 2]],
            "embedding": self.vectors[i],
            "episodeBlob": {"note": f"{self.owner}-payload-{i}"},
            "metadata": {"owner": f"{self.owner}-meta-{i}"},
        }

    @property
    def offered(self) -> list[str]:
        return self.ids[:6] + self.concepts[:5] + self.tags[:2]

    @property
    def secret(self) -> set[str]:
        words = set(self.ids[6:] + self.concepts[5:] + self.tags[2:])
        return words | {f"{self.owner}-{w}-{i}" for w in ("payload", "meta") for i in range(12)}


OTHERS = [Vocab("alice"), Vocab("dflt")]
SECRETS = set().union(*(v.secret for v in OTHERS))
EVERY_WORD = SECRETS | {w for v in OTHERS for w in v.offered}


def leaked(reply: str, request: str) -> set[str]:
    """The others' secret tokens in `reply` that bob did not send in `request` itself (a
    refusal may rightly echo the id bob asked for)."""
    return (set(TOKEN.findall(reply)) & SECRETS) - set(TOKEN.findall(request))


# -- strategies for bob ------------------------------------------------------------------------
ALL_IDS = [i for v in OTHERS for i in v.ids]
ALL_CONCEPTS = [c for v in OTHERS for c in v.concepts]
ALL_TAGS = [t for v in OTHERS for t in v.tags]
OFFERED_IDS = [i for v in OTHERS for i in v.ids[:6]] + [f"bob-ep-{i}" for i in range(6)]
OFFERED_CONCEPTS = [c for v in OTHERS for c in v.concepts[:5]] + ["concept:bob-0"]
OFFERED_TAGS = [t for v in OTHERS for t in v.tags[:2]] + ["bob-tag"]
ALL_VECTORS = [vec for v in OTHERS for vec in v.vectors]

unit = st.floats(-1, 1, allow_nan=False, width=32)
vectors = st.one_of(
    st.sampled_from(ALL_VECTORS),
    st.tuples(st.sampled_from(ALL_VECTORS), st.lists(unit, min_size=DIM, max_size=DIM)).map(
        lambda p: [a + 0.05 * b for a, b in zip(p[0], p[1], strict=True)]
    ),
    st.lists(unit, min_size=DIM, max_size=DIM),
)
strength = st.floats(0.05, 1.0)
any_cue = st.dictionaries(st.sampled_from(ALL_CONCEPTS), strength, min_size=1, max_size=4)
offered_cue = st.dictionaries(st.sampled_from(OFFERED_CONCEPTS), strength, min_size=1, max_size=3)
any_tags = st.lists(st.sampled_from(ALL_TAGS), max_size=2, unique=True)
blob = st.booleans()

TOOL_ARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    # Bob stores only words he was offered, so what he reads back of his own is never secret.
    "memory.put": st.fixed_dictionaries(
        {"id": st.sampled_from(OFFERED_IDS), "concepts": offered_cue},
        optional={
            "tags": st.lists(st.sampled_from(OFFERED_TAGS), max_size=2, unique=True),
            "embedding": vectors,
            "episodeBlob": st.just({"note": "bob-blob"}),
        },
    ),
    "memory.get": st.fixed_dictionaries(
        {"id": st.sampled_from(ALL_IDS)}, optional={"includeBlob": blob}
    ),
    "memory.search": st.fixed_dictionaries(
        {"embedding": vectors},
        optional={"k": st.integers(1, 50), "tags": any_tags, "includeBlob": blob},
    ),
    "memory.recall": st.fixed_dictionaries(
        {"concepts": any_cue},
        optional={
            "k": st.integers(1, 50),
            "complete": st.booleans(),
            "tags": any_tags,
            "includeBlob": blob,
        },
    ),
    "memory.sleep": st.one_of(st.just({"once": True}), st.just({"jobId": "job-1"})),
    "memory.prune": st.one_of(st.just({"dryRun": True}), st.just({"jobId": "job-1"})),
    "memory.kcl_status": st.fixed_dictionaries({}, optional={"modes": st.integers(0, 5)}),
    "memory.stats": st.just({}),
}

vault_filter = st.builds(vpb.EpisodeFilter, tags=any_tags)
VAULT_REQUESTS: dict[str, st.SearchStrategy[Message]] = {
    "GetEpisode": st.builds(vpb.GetEpisodeRequest, id=st.sampled_from(ALL_IDS)),
    "DeleteEpisode": st.builds(vpb.DeleteEpisodeRequest, id=st.sampled_from(ALL_IDS)),
    "MarkConsolidated": st.builds(
        vpb.MarkConsolidatedRequest,
        episode_ids=st.lists(st.sampled_from(ALL_IDS), min_size=1, max_size=5),
        graph_version=st.integers(1, 5),
    ),
    "ListRecent": st.builds(vpb.ListRecentRequest, filter=vault_filter),
    "Search": st.builds(
        vpb.SearchRequest, embedding=vectors, k=st.integers(1, 50), filter=vault_filter
    ),
    "Recall": st.builds(
        vpb.RecallRequest,
        cue=any_cue.map(
            lambda c: vpb.ConceptActivation(concept_ids=list(c), strengths=list(c.values()))
        ),
        k=st.integers(1, 50),
        filter=vault_filter,
    ),
    "PurgeTTL": st.builds(vpb.PurgeTTLRequest, ttl_hours=st.sampled_from([1e-9, 0.0])),
    "Scan": st.builds(vpb.ScanRequest, after_seq=st.integers(0, 3)),
}


# -- the fleet, the gateway and the others' episodes ---------------------------------------------
@dataclass
class Tenants:
    gateway: GatewayThread
    http: httpx2.Client
    counts: dict[str, tuple[int, ...]]
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def tool(self, key: str, name: str, arguments: dict[str, Any]) -> str:
        """The whole JSON-RPC reply to one tools/call by the holder of `key`, as text."""
        body = {
            "jsonrpc": "2.0",
            "id": next(self.ids),
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        }
        reply = self.http.post(self.gateway.url, json=body, headers=_auth(key))
        assert reply.status_code == 200, reply.text
        return reply.text


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}


def _counts(fleet: Fleet) -> dict[str, tuple[int, ...]]:
    """The others' state: episodes, consolidated ones, graph version and edges, per namespace."""
    vault = fleet.services["episodic_vault"].channel.unary_unary(
        "/tori.episodic.v1.EpisodicVault/GetStats",
        request_serializer=vpb.GetStatsRequest.SerializeToString,
        response_deserializer=vpb.GetStatsResponse.FromString,
    )
    graph = fleet.services["sleep_scheduler"].channel.unary_unary(
        "/tori.sleep.v1.SleepScheduler/GetGraphStats",
        request_serializer=spb.GetGraphStatsRequest.SerializeToString,
        response_deserializer=spb.GraphStats.FromString,
    )
    out: dict[str, tuple[int, ...]] = {}
    for ns in ("alice", "default"):
        md = (("x-tori-namespace", ns),)
        v = vault(vpb.GetStatsRequest(), metadata=md, timeout=10)
        g = graph(spb.GetGraphStatsRequest(), metadata=md, timeout=10)
        out[ns] = (v.episode_count, v.consolidated_count, g.header.version, g.header.edge_count)
    return out


def _sleep_once(t: Tenants) -> dict[str, Any]:
    """memory.sleep for the default namespace, retried as its UNAVAILABLE answer advises.

    In one full-suite run (1 of 4 tried) the gateway's first call to the just-started scheduler
    failed "unavailable (failed to connect to all addresses)" though the scheduler served; the
    answer says to retry in a few seconds, as a client would. Isolation, not first-call
    availability, is what this module tests; a scheduler that stays down still fails here.
    """
    for attempt in range(3):
        slept: dict[str, Any] = json.loads(t.tool(PLAIN_KEY, "memory.sleep", {"once": True}))
        text = json.dumps(slept)
        if not (slept["result"].get("isError") and "is unavailable" in text) or attempt == 2:
            return slept
        time.sleep(2.0)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def tenants(fleet: Fleet) -> Iterator[Tenants]:
    http_port, metrics_port = free_ports(2)
    keys = [f"{ALICE_KEY} alice", f"{BOB_KEY} bob", PLAIN_KEY]
    gw_cfg = fleet.settings.gateway.model_copy(
        update={"port": http_port, "metrics_port": metrics_port, "api_keys": keys}
    )
    gw = GatewayThread(fleet.settings.model_copy(update={"gateway": gw_cfg})).start()
    try:
        with httpx2.Client(timeout=120) as http:
            t = Tenants(gw, http, {})
            for key, vocab in ((ALICE_KEY, OTHERS[0]), (PLAIN_KEY, OTHERS[1])):
                episodes = [vocab.episode(i) for i in range(N_EPISODES)]
                out = json.loads(t.tool(key, "memory.put", {"episodes": episodes}))
                assert not out["result"].get("isError"), out
            # The default namespace's episodes become the scheduler's graph (and its prototypes).
            slept = _sleep_once(t)
            assert not slept["result"].get("isError"), slept
            t.counts = _counts(fleet)
            yield t
    finally:
        gw.stop()


# -- the properties ------------------------------------------------------------------------------
@pytest.mark.parametrize("tool", sorted(TOOL_ARGS))
def test_no_tool_tells_bob_anything_of_the_others(
    tool: str, fleet: Fleet, tenants: Tenants
) -> None:
    """Every MCP tool, called by bob with the others' ids, concepts, tags and embeddings, answers
    without a token of theirs bob was not given, and changes none of their episodes."""

    @COMMON
    @given(arguments=TOOL_ARGS[tool])
    def prop(arguments: dict[str, Any]) -> None:
        reply = tenants.tool(BOB_KEY, tool, arguments)
        assert not leaked(reply, json.dumps(arguments)), (arguments, reply)

    prop()
    assert _counts(fleet) == tenants.counts


def _invoke(
    channel: grpc.Channel, method: MethodDescriptor, request: Message
) -> tuple[grpc.StatusCode, str]:
    """Call as namespace bob; the status and everything the reply said, as text."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    out_cls = GetMessageClass(method.output_type)
    kw: dict[str, Any] = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": out_cls.FromString,
    }
    said: list[str] = []
    try:
        if method.client_streaming and method.server_streaming:
            for r in itertools.islice(
                channel.stream_stream(path, **kw)(iter([request]), timeout=CALL_TIMEOUT_S,
                                                  metadata=BOB_MD), 50):  # fmt: skip
                said.append(text_format.MessageToString(r))
        elif method.client_streaming:
            r = channel.stream_unary(path, **kw)(
                iter([request]), timeout=CALL_TIMEOUT_S, metadata=BOB_MD
            )
            said.append(text_format.MessageToString(r))
        elif method.server_streaming:
            replies = channel.unary_stream(path, **kw)(
                request, timeout=CALL_TIMEOUT_S, metadata=BOB_MD
            )
            said += [text_format.MessageToString(r) for r in itertools.islice(replies, 50)]
        else:
            r = channel.unary_unary(path, **kw)(request, timeout=CALL_TIMEOUT_S, metadata=BOB_MD)
            said.append(text_format.MessageToString(r))
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, "\n".join(said)


def _rpc_ids(param: tuple[Target, MethodDescriptor]) -> str:
    return f"{param[0].name}.{param[1].name}"


@pytest.mark.parametrize(("target", "method"), METHODS, ids=[_rpc_ids(m) for m in METHODS])
def test_no_rpc_tells_namespace_bob_anything_of_the_others(
    target: Target, method: MethodDescriptor, fleet: Fleet, tenants: Tenants
) -> None:
    """Every RPC of every service, sent for namespace bob (the vault's with the others' ids,
    cues, filters and embeddings, the rest arbitrary), answers without a secret of theirs, and
    changes none of their episodes or graphs (the scheduler, pruner and learner answer bob
    from his own graph, backups and dynamics)."""
    channel = fleet.services[target.name].channel
    in_cls = GetMessageClass(method.input_type)
    requests = VAULT_REQUESTS.get(method.name, messages(in_cls))
    if target.name != "episodic_vault":
        requests = messages(in_cls)

    @COMMON
    @given(request=requests)
    def prop(request: Message) -> None:
        code, said = _invoke(channel, method, request)
        assert code not in CRASHES, (method.full_name, code, said)
        assert not leaked(said, text_format.MessageToString(request)), (request, said)

    prop()
    assert _counts(fleet) == tenants.counts


def test_no_metric_label_names_an_episode_a_concept_or_a_tag(
    fleet: Fleet, tenants: Tenants
) -> None:
    """After all of the above, no metrics page of the gateway or a service holds a word of
    the others' vocabularies (labels carry tools, methods, codes and fields, never data)."""
    pages = [tenants.gateway.metrics_url] + [
        f"http://127.0.0.1:{run.server.running.metrics_port}/metrics"
        for run in fleet.services.values()
    ]
    for url in pages:
        with urllib.request.urlopen(url, timeout=10) as resp:
            page = resp.read().decode()
        assert not set(TOKEN.findall(page)) & EVERY_WORD, url
