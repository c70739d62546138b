"""Search (embeddings) and Recall (concept cues) over real gRPC, on every backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex
from mcp_services.sleep_scheduler.rpc.codec import commit_chunks
from tests.conftest import free_port
from tests.episodic_vault.conftest import Vault, VaultFactory
from tests.episodic_vault.test_backend_contract import (  # noqa: F401  (fixtures)
    POSTGRES_DSN,
    REDIS_URL,
    pg_schema,
    redis_prefix,
)
from tests.sleep_scheduler.conftest import SchedulerFactory, start_scheduler  # noqa: F401

DIM = 8


def episode(
    i: int,
    vec: np.ndarray | list[float],
    concepts: dict[str, float] | None = None,
    **kw: Any,
) -> pb.Episode:
    concepts = concepts if concepts is not None else {f"c{i}": 0.9}
    ep = pb.Episode(
        id=f"ep-{i}",
        tags=kw.pop("tags", ["t"]),
        source=pb.Source(type=kw.pop("source", "test")),
        energy=kw.pop("energy", 0.5),
        activation=pb.ConceptActivation(
            concept_ids=list(concepts), strengths=list(concepts.values())
        ),
        embedding=[float(x) for x in vec],
        **kw,
    )
    return ep


def put_all(vault: Vault, eps: list[pb.Episode]) -> None:
    vault.stub.PutEpisodes(iter(pb.PutEpisodeRequest(episode=e) for e in eps))


def search(vault: Vault, vec: Any, k: int = 10, **kw: Any) -> pb.SearchResponse:
    resp: pb.SearchResponse = vault.stub.Search(
        pb.SearchRequest(embedding=[float(x) for x in vec], k=k, **kw)
    )
    return resp


def recall(vault: Vault, cue: dict[str, float], k: int = 10, **kw: Any) -> pb.RecallResponse:
    resp: pb.RecallResponse = vault.stub.Recall(
        pb.RecallRequest(
            cue=pb.ConceptActivation(concept_ids=list(cue), strengths=list(cue.values())),
            k=k,
            **kw,
        )
    )
    return resp


def ids(hits: Any) -> list[str]:
    return [h.episode.id for h in hits]


def within(seconds: float, check: Callable[[], bool]) -> bool:
    """Poll `check` until it holds or `seconds` pass (no sleep-and-assert timing)."""
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


@pytest.fixture(params=["sqlite", "memory", "redis", "postgres"])
def any_vault(request: pytest.FixtureRequest, start_vault: VaultFactory) -> Vault:
    vault: dict[str, Any] = {"backend": request.param, "embedding_dim": DIM}
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        vault["redis"] = {"url": REDIS_URL, "key_prefix": prefix}
    if request.param == "postgres":
        schema = request.getfixturevalue("pg_schema")
        vault["postgres"] = {
            "dsn": POSTGRES_DSN,
            "schema_name": schema,
            "pool_min_size": 1,
            "pool_max_size": 4,
        }
    return start_vault(vault=vault)


class TestVisibility:
    def test_a_put_is_returned_by_search_and_recall_within_one_second(
        self, any_vault: Vault
    ) -> None:
        """Right after its acknowledgement, an episode is found by its embedding and concepts."""
        rng = np.random.default_rng(1)
        put_all(any_vault, [episode(i, rng.normal(size=DIM)) for i in range(30)])
        vec = rng.normal(size=DIM)
        any_vault.stub.PutEpisode(
            pb.PutEpisodeRequest(episode=episode(99, vec, {"concept:new": 1.0}))
        )
        assert within(1.0, lambda: ids(search(any_vault, vec, k=1).hits) == ["ep-99"])
        assert within(1.0, lambda: ids(recall(any_vault, {"concept:new": 1.0}).hits) == ["ep-99"])
        top = search(any_vault, vec, k=1).hits[0]
        assert top.score == pytest.approx(1.0, abs=1e-5)

    def test_deleted_and_purged_episodes_never_come_back(self, any_vault: Vault) -> None:
        """No ghosts: a deleted or purged episode leaves Search and Recall at once."""
        rng = np.random.default_rng(2)
        vecs = rng.normal(size=(6, DIM))
        put_all(any_vault, [episode(i, vecs[i], {"shared": 0.8}) for i in range(6)])
        any_vault.stub.DeleteEpisode(pb.DeleteEpisodeRequest(id="ep-2"))
        assert "ep-2" not in ids(search(any_vault, vecs[2], k=6).hits)
        assert "ep-2" not in ids(recall(any_vault, {"shared": 1.0}).hits)
        # Everything is older than a microscopic TTL; nothing is referenced or consolidated.
        any_vault.stub.MarkConsolidated(
            pb.MarkConsolidatedRequest(episode_ids=["ep-0"], graph_version=1)
        )
        time.sleep(0.01)  # the purge cutoff must lie after the puts' storage time
        purged = any_vault.stub.PurgeTTL(pb.PurgeTTLRequest(ttl_hours=1e-9)).purged
        assert purged == 4
        assert ids(search(any_vault, vecs[3], k=6).hits) == ["ep-0"]
        assert ids(recall(any_vault, {"shared": 1.0}).hits) == ["ep-0"]


class TestSearch:
    def test_hits_are_the_exact_cosine_neighbours_best_first(self, vault: Vault) -> None:
        """Against a numpy brute force over the same vectors, the top 10 agree, with scores."""
        rng = np.random.default_rng(3)
        vecs = rng.normal(size=(300, DIM)).astype(np.float32)
        put_all(vault, [episode(i, vecs[i]) for i in range(300)])
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        for _ in range(5):
            q = rng.normal(size=DIM).astype(np.float32)
            sims = unit @ (q / np.linalg.norm(q))
            truth = [f"ep-{i}" for i in np.argsort(-sims)[:10]]
            resp = search(vault, q)
            assert ids(resp.hits) == truth
            assert [h.score for h in resp.hits] == pytest.approx(sorted(sims)[::-1][:10], abs=1e-5)
            assert resp.index_size == 300

    def test_the_approximate_path_keeps_recall_at_10_above_0_95(
        self, start_vault: VaultFactory
    ) -> None:
        """With exact answers switched off, HNSW's top 10 overlap the brute-force top 10 >= 95%."""
        v = start_vault(
            vault={"backend": "memory", "embedding_dim": 16, "index": {"exact_max_candidates": 0}}
        )
        rng = np.random.default_rng(4)
        vecs = rng.normal(size=(2000, 16)).astype(np.float32)
        for start in range(0, 2000, 500):
            put_all(v, [episode(i, vecs[i]) for i in range(start, start + 500)])
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        found = 0
        for _ in range(40):
            q = rng.normal(size=16).astype(np.float32)
            truth = {f"ep-{i}" for i in np.argsort(-(unit @ q))[:10]}
            resp = search(v, q)
            found += len(truth & set(ids(resp.hits)))
        assert found / 400 >= 0.95

    def test_filters_narrow_the_hits(self, vault: Vault) -> None:
        """Tags, time range, source type, minimum energy and tier each restrict the candidates."""
        rng = np.random.default_rng(5)
        eps = []
        for i in range(20):
            e = episode(
                i,
                rng.normal(size=DIM),
                tags=["even" if i % 2 == 0 else "odd"],
                source="a" if i < 10 else "b",
                energy=float(i),
            )
            e.timestamp.FromMilliseconds(1_700_000_000_000 + i)
            eps.append(e)
        put_all(vault, eps)
        vault.stub.MarkConsolidated(
            pb.MarkConsolidatedRequest(episode_ids=["ep-3", "ep-4"], graph_version=1)
        )
        q = rng.normal(size=DIM)

        def by(**kw: Any) -> set[str]:
            return set(ids(search(vault, q, k=50, **kw).hits))

        assert by(filter=pb.EpisodeFilter(tags=["odd"])) == {f"ep-{i}" for i in range(1, 20, 2)}
        since, until = pb.EpisodeFilter().since, pb.EpisodeFilter().until
        since.FromMilliseconds(1_700_000_000_005)
        until.FromMilliseconds(1_700_000_000_008)
        assert by(filter=pb.EpisodeFilter(since=since, until=until)) == {"ep-5", "ep-6", "ep-7"}
        assert by(filter=pb.EpisodeFilter(source_type="b")) == {f"ep-{i}" for i in range(10, 20)}
        assert by(filter=pb.EpisodeFilter(min_energy=18)) == {"ep-18", "ep-19"}
        assert by(tier=pb.TIER_LTM) == {"ep-3", "ep-4"}
        assert by(tier=pb.TIER_STM) == {f"ep-{i}" for i in range(20)} - {"ep-3", "ep-4"}
        assert by(tier=pb.TIER_MTM) == set()
        assert by(filter=pb.EpisodeFilter(tags=["nope"])) == set()
        resp = search(vault, q, filter=pb.EpisodeFilter(tags=["odd"]))
        assert resp.exact

    def test_omit_bodies_leaves_payload_and_embedding_out(self, vault: Vault) -> None:
        """omit_bodies trims the returned episodes; scores and ids are unchanged."""
        put_all(vault, [episode(1, [1.0] * DIM, payload=b"x" * 100)])
        hit = search(vault, [1.0] * DIM, omit_bodies=True).hits[0]
        assert hit.episode.id == "ep-1" and not hit.episode.payload and not hit.episode.embedding

    @pytest.mark.parametrize(
        ("request_kw", "field"),
        [
            ({"embedding": [1.0] * (DIM - 1)}, "embedding"),
            ({"embedding": [0.0] * DIM}, "embedding"),
            ({"embedding": [1.0] * (DIM - 1) + [float("nan")]}, f"embedding[{DIM - 1}]"),
            ({"embedding": [1.0] * DIM, "k": 1001}, "k"),
            ({"embedding": [1.0] * DIM, "k": -1}, "k"),
            ({"embedding": [1.0] * DIM, "tier": 9}, "tier"),
            (
                {"embedding": [1.0] * DIM, "filter": pb.EpisodeFilter(min_energy=-1)},
                "filter.min_energy",
            ),
        ],
    )
    def test_bad_requests_name_the_field(
        self, vault: Vault, request_kw: dict[str, Any], field: str
    ) -> None:
        """Malformed searches are INVALID_ARGUMENT with the field first in the message."""
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.Search(pb.SearchRequest(**request_kw))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field + ":")

    def test_without_embeddings_search_is_a_failed_precondition(
        self, start_vault: VaultFactory
    ) -> None:
        """A deployment without embeddings says so instead of returning nothing."""
        v = start_vault(vault={"backend": "memory", "embedding_dim": 0})
        with pytest.raises(grpc.RpcError) as err:
            v.stub.Search(pb.SearchRequest(embedding=[]))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "embedding_dim" in err.value.details()


class TestRecall:
    def test_hits_rank_by_strength_weighted_overlap(self, vault: Vault) -> None:
        """Scores are the cosine over concept strengths, computed here by hand."""
        put_all(
            vault,
            [
                episode(1, [1.0] * DIM, {"a": 1.0, "b": 1.0}),
                episode(2, [1.0] * DIM, {"a": 0.5}),
                episode(3, [1.0] * DIM, {"a": 0.2, "c": 1.0}),
                episode(4, [1.0] * DIM, {"z": 1.0}),
            ],
        )
        resp = recall(vault, {"a": 1.0, "b": 0.5})
        cue = np.array([1.0, 0.5])
        expect = {
            "ep-1": (1.0 + 0.5) / (np.linalg.norm(cue) * np.sqrt(2)),
            "ep-2": 0.5 / (np.linalg.norm(cue) * 0.5),
            "ep-3": 0.2 / (np.linalg.norm(cue) * np.hypot(0.2, 1.0)),
        }
        assert ids(resp.hits) == sorted(expect, key=lambda k: -expect[k])
        for h in resp.hits:
            assert h.score == pytest.approx(expect[h.episode.id], abs=1e-6)
        assert list(resp.hits[0].matched_concepts) == ["a", "b"]
        # Completion is on by default; no scheduler runs here, so the cue is ranked as given.
        assert resp.completion == pb.COMPLETION_UNAVAILABLE
        assert "ranked by the cue as given" in resp.completion_detail

    def test_a_trace_counts_each_concept_at_its_strongest(self, vault: Vault) -> None:
        """Concepts of a trace episode are recalled with their strongest strength over frames."""
        ep = episode(1, [1.0] * DIM, {})
        ep.ClearField("activation")
        for k, s in enumerate([0.2, 0.9, 0.4]):
            f = ep.trace.add(offset_ms=k)
            f.activation.concept_ids.append("x")
            f.activation.strengths.append(s)
        put_all(vault, [ep, episode(2, [1.0] * DIM, {"x": 0.3, "y": 0.3})])
        resp = recall(vault, {"x": 1.0})
        assert ids(resp.hits) == ["ep-1", "ep-2"]
        assert resp.hits[0].score == pytest.approx(1.0)

    def test_filters_and_tier_apply(self, vault: Vault) -> None:
        """Recall honours the same filter and tier as Search."""
        put_all(
            vault,
            [episode(i, [1.0] * DIM, {"a": 0.5 + i / 10}, tags=[f"g{i % 2}"]) for i in range(4)],
        )
        vault.stub.MarkConsolidated(
            pb.MarkConsolidatedRequest(episode_ids=["ep-0"], graph_version=2)
        )
        # Single-concept episodes all score 1.0 against a one-concept cue: ties go oldest first.
        hits = recall(vault, {"a": 1.0}, filter=pb.EpisodeFilter(tags=["g1"])).hits
        assert ids(hits) == ["ep-1", "ep-3"]
        assert ids(recall(vault, {"a": 1.0}, tier=pb.TIER_LTM).hits) == ["ep-0"]

    @pytest.mark.parametrize(
        ("cue", "k", "field"),
        [
            ({}, 0, "cue.concept_ids"),
            ({"a": 0.0}, 0, "cue.strengths[0]"),
            ({"a": 1.5}, 0, "cue.strengths[0]"),
            ({" ": 1.0}, 0, "cue.concept_ids[0]"),
            ({"a": 1.0}, 1001, "k"),
        ],
    )
    def test_bad_cues_name_the_field(
        self, vault: Vault, cue: dict[str, float], k: int, field: str
    ) -> None:
        """An empty cue, strengths outside (0, 1], blank ids and a bad k are INVALID_ARGUMENT."""
        with pytest.raises(grpc.RpcError) as err:
            recall(vault, cue, k=k)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(field + ":")

    def test_mismatched_strengths_are_refused(self, vault: Vault) -> None:
        """A cue with fewer strengths than concepts names cue.strengths."""
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.Recall(
                pb.RecallRequest(cue=pb.ConceptActivation(concept_ids=["a", "b"], strengths=[1.0]))
            )
        assert err.value.details().startswith("cue.strengths:")


def two_assemblies() -> tuple[ConceptGraph, sp.csr_matrix]:
    """12 concepts storing the assemblies {0..4} and {5..9}."""
    n = 12
    w = np.zeros((n, n))
    for group in (range(5), range(5, 10)):
        for i in group:
            for j in group:
                if i != j:
                    w[i, j] = 1.0
    protos = sp.csr_matrix(np.array([[1.0] * 5 + [0.0] * 7, [0.0] * 5 + [1.0] * 5 + [0.0] * 2]))
    return ConceptGraph(
        ConceptIndex.of_size(n, "concept:"), sp.csr_matrix(w), np.full(n, -1.5)
    ), protos


class TestCompletion:
    def test_an_unreachable_scheduler_falls_back_to_the_concept_index(
        self, start_vault: VaultFactory
    ) -> None:
        """With nobody listening at the scheduler address, Recall still answers and says why."""
        v = start_vault(
            vault={
                "backend": "memory",
                "embedding_dim": DIM,
                "recall": {
                    "scheduler_address": f"127.0.0.1:{free_port()}",
                    "completion_timeout_ms": 200,
                },
            }
        )
        put_all(v, [episode(1, [1.0] * DIM, {"concept:5": 1.0})])
        resp = recall(v, {"concept:5": 1.0})
        assert ids(resp.hits) == ["ep-1"]
        assert resp.completion == pb.COMPLETION_UNAVAILABLE
        assert "127.0.0.1" in resp.completion_detail and "as given" in resp.completion_detail
        assert dict(
            zip(resp.effective_cue.concept_ids, resp.effective_cue.strengths, strict=True)
        ) == {"concept:5": 1.0}

    def test_a_partial_cue_is_completed_through_the_consolidated_graph(
        self,
        start_vault: VaultFactory,
        start_scheduler: SchedulerFactory,  # noqa: F811
    ) -> None:
        """A cue of three assembly members recalls an episode holding the other two."""
        sched = start_scheduler()
        g, protos = two_assemblies()
        chunks = commit_chunks(0, g, protos, None, "test", "r", 7)
        assert sched.stub.CommitGraph(iter(chunks)).header.version == 1
        v = start_vault(
            vault={
                "backend": "memory",
                "embedding_dim": DIM,
                "recall": {"scheduler_address": sched.target, "completion_timeout_ms": 5000},
            }
        )
        put_all(
            v,
            [
                episode(1, [1.0] * DIM, {"concept:8": 1.0, "concept:9": 1.0}),
                episode(2, [1.0] * DIM, {"concept:0": 1.0}),
            ],
        )
        cue = {"concept:5": 1.0, "concept:6": 0.9, "concept:7": 0.8}
        plain = recall(v, cue, no_completion=True)
        assert plain.hits == [] and plain.completion == pb.COMPLETION_DISABLED
        resp = recall(v, cue)
        assert resp.completion == pb.COMPLETION_APPLIED and resp.graph_version == 1
        assert sorted(resp.effective_cue.concept_ids) == [f"concept:{i}" for i in range(5, 10)]
        assert ids(resp.hits) == ["ep-1"]
