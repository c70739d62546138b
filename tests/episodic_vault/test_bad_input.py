"""Bad input: INVALID_ARGUMENT naming the field and the fix, and nothing stored."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import grpc
import pytest

from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from tests.episodic_vault.conftest import Vault, good_episode

Mutator = Callable[[pb.Episode], None]


def _set_strength(v: float) -> Mutator:
    def m(ep: pb.Episode) -> None:
        ep.activation.strengths[1] = v

    return m


def _set_phase(v: float) -> Mutator:
    def m(ep: pb.Episode) -> None:
        ep.activation.phases[0] = v

    return m


def _concept_id(v: str) -> Mutator:
    def m(ep: pb.Episode) -> None:
        ep.activation.concept_ids[0] = v

    return m


def _extra_strength(ep: pb.Episode) -> None:
    ep.activation.strengths.append(0.5)


def _short_phases(ep: pb.Episode) -> None:
    del ep.activation.phases[1]


def _big_payload(ep: pb.Episode) -> None:
    ep.payload = b"x" * (1024 * 1024 + 1)


def _many_metadata(ep: pb.Episode) -> None:
    ep.metadata.update({f"k{i}": "v" for i in range(65)})


def _long_metadata_value(ep: pb.Episode) -> None:
    ep.metadata["k"] = "v" * 4097


def _embedding_dim(ep: pb.Episode) -> None:
    ep.embedding.append(1.0)


def _embedding_nan(ep: pb.Episode) -> None:
    ep.embedding[3] = math.nan


def _id(v: str) -> Mutator:
    def m(ep: pb.Episode) -> None:
        ep.id = v

    return m


def _future(ep: pb.Episode) -> None:
    ep.timestamp.FromSeconds(int(time.time()) + 86_400)


def _trace_and_activation(ep: pb.Episode) -> None:
    ep.trace.add(offset_ms=0).activation.CopyFrom(ep.activation)


def _energy(ep: pb.Episode) -> None:
    ep.energy = math.inf


def _long_tag(ep: pb.Episode) -> None:
    ep.tags.append("t" * 129)


# (mutation, the field path the message must name, a phrase of the fix or the problem)
CASES: dict[str, tuple[Mutator, str, str]] = {
    "empty concept id": (_concept_id(""), "episode.activation.concept_ids[0]", "is empty"),
    "blank concept id": (_concept_id("   "), "episode.activation.concept_ids[0]", "blank"),
    "over-long concept id": (
        _concept_id("c" * 257),
        "episode.activation.concept_ids[0]",
        "the limit is 256",
    ),
    "duplicate concept id": (
        _concept_id("concept:b"),
        "episode.activation.concept_ids[1]",
        "twice",
    ),
    "NaN strength": (
        _set_strength(math.nan),
        "episode.activation.strengths[1]",
        "nan is not a finite",
    ),
    "infinite strength": (
        _set_strength(math.inf),
        "episode.activation.strengths[1]",
        "inf is not a finite",
    ),
    "strength above 1": (_set_strength(1.5), "episode.activation.strengths[1]", "in [0, 1]"),
    "negative strength": (_set_strength(-0.25), "episode.activation.strengths[1]", "in [0, 1]"),
    "NaN phase": (_set_phase(math.nan), "episode.activation.phases[0]", "not a finite phase"),
    "phase out of range": (_set_phase(7.0), "episode.activation.phases[0]", "[-2pi, 2pi]"),
    "strengths longer than ids": (
        _extra_strength,
        "episode.activation.strengths",
        "give one strength per concept",
    ),
    "phases shorter than ids": (
        _short_phases,
        "episode.activation.phases",
        "one phase per concept",
    ),
    "payload over the limit": (_big_payload, "episode.payload", "max_payload_bytes"),
    "too many metadata entries": (_many_metadata, "episode.metadata", "max_metadata_entries"),
    "metadata value too long": (
        _long_metadata_value,
        "episode.metadata['k']",
        "max_metadata_value_len",
    ),
    "embedding of the wrong dimension": (
        _embedding_dim,
        "episode.embedding",
        "have 8 (vault.embedding_dim)",
    ),
    "embedding with NaN": (_embedding_nan, "episode.embedding[3]", "not finite"),
    "malformed id (space)": (_id("has space"), "episode.id", "not a valid episode id"),
    "malformed id (leading dash)": (_id("-x"), "episode.id", "starting with a letter or digit"),
    "over-long id": (_id("a" * 129), "episode.id", "1-128 characters"),
    "timestamp far in the future": (_future, "episode.timestamp", "in the future"),
    "activation and trace both set": (_trace_and_activation, "episode.trace", "one or the other"),
    "infinite energy": (_energy, "episode.energy", "finite value >= 0"),
    "over-long tag": (_long_tag, "episode.tags[1]", "the limit is 128"),
}


class TestUnaryPut:
    @pytest.mark.parametrize("case", list(CASES))
    def test_bad_field_is_refused_by_name_and_nothing_stored(self, vault: Vault, case: str) -> None:
        """Each bad input gets INVALID_ARGUMENT whose message names the field and says what is
        wrong, and the vault stores nothing."""
        mutate, field, phrase = CASES[case]
        ep = good_episode(1)
        ep.id = "victim" if not case.startswith(("malformed id", "over-long id")) else ep.id
        mutate(ep)
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.PutEpisode(pb.PutEpisodeRequest(episode=ep))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details() or ""
        assert details.startswith(field + ":"), details
        assert phrase in details, details
        assert vault.count() == 0

    def test_missing_episode_is_invalid(self, vault: Vault) -> None:
        """A request without an episode is INVALID_ARGUMENT naming `episode`."""
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.PutEpisode(pb.PutEpisodeRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("episode: is missing")

    def test_same_id_different_content_is_already_exists(self, vault: Vault) -> None:
        """Reusing an id for other content is ALREADY_EXISTS naming the id; the original stays."""
        vault.stub.PutEpisode(pb.PutEpisodeRequest(episode=good_episode(1)))
        other = good_episode(1)
        other.energy = 0.9
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.PutEpisode(pb.PutEpisodeRequest(episode=other))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "'ep-1'" in (err.value.details() or "")
        got = vault.stub.GetEpisode(pb.GetEpisodeRequest(id="ep-1")).episode
        assert got.energy == 0.5 and vault.count() == 1

    def test_same_id_same_content_is_idempotent_success(self, vault: Vault) -> None:
        """Re-sending the identical episode succeeds as EXISTING with the original seq."""
        first = vault.stub.PutEpisode(pb.PutEpisodeRequest(episode=good_episode(1))).result
        again = vault.stub.PutEpisode(pb.PutEpisodeRequest(episode=good_episode(1))).result
        assert first.status == pb.PUT_STATUS_CREATED
        assert again.status == pb.PUT_STATUS_EXISTING and again.seq == first.seq
        assert vault.count() == 1


class TestBatchPut:
    def test_one_bad_episode_fails_the_batch_and_stores_nothing(self, vault: Vault) -> None:
        """A bad episode in a stream is named by its index; none of the batch is stored."""
        eps = [good_episode(i) for i in range(5)]
        eps[3].activation.strengths[0] = math.nan
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.PutEpisodes(iter(pb.PutEpisodeRequest(episode=e) for e in eps))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("episodes[3].activation.strengths[0]:")
        assert vault.count() == 0

    def test_conflict_in_a_batch_stores_nothing(self, vault: Vault) -> None:
        """An id conflict anywhere in a batch is ALREADY_EXISTS and the batch is rolled back."""
        vault.stub.PutEpisode(pb.PutEpisodeRequest(episode=good_episode(2)))
        eps = [good_episode(i) for i in range(4)]
        eps[2].energy = 0.25  # same id as the stored ep-2, different content
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.PutEpisodes(iter(pb.PutEpisodeRequest(episode=e) for e in eps))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert vault.count() == 1

    def test_batch_over_the_limit_is_refused(self, start_vault: object) -> None:
        """More episodes than vault.limits.max_batch in one stream is refused, naming the limit."""
        v = start_vault(vault={"limits": {"max_batch": 3}, "embedding_dim": 8})  # type: ignore[operator]
        with pytest.raises(grpc.RpcError) as err:
            v.stub.PutEpisodes(
                iter(pb.PutEpisodeRequest(episode=good_episode(i)) for i in range(4))
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "vault.limits.max_batch" in (err.value.details() or "")
        assert v.count() == 0


class TestReadArguments:
    def test_get_with_malformed_id_is_invalid(self, vault: Vault) -> None:
        """GetEpisode with an id that could never exist is INVALID_ARGUMENT, not NOT_FOUND."""
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.GetEpisode(pb.GetEpisodeRequest(id="a b"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("id:")

    def test_list_with_bad_page_size_and_range(self, vault: Vault) -> None:
        """ListRecent names page_size out of range and an empty time range."""
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.ListRecent(pb.ListRecentRequest(page_size=5000))
        assert (err.value.details() or "").startswith("page_size:")
        req = pb.ListRecentRequest()
        req.filter.since.FromSeconds(100)
        req.filter.until.FromSeconds(50)
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.ListRecent(req)
        assert (err.value.details() or "").startswith("filter.until:")

    def test_foreign_page_token_is_refused(self, vault: Vault) -> None:
        """A token that the vault did not issue, or for another filter, is INVALID_ARGUMENT."""
        for i in range(3):
            vault.stub.PutEpisode(pb.PutEpisodeRequest(episode=good_episode(i)))
        page = vault.stub.ListRecent(pb.ListRecentRequest(page_size=1))
        assert page.next_page_token
        other = pb.ListRecentRequest(page_size=1, page_token=page.next_page_token)
        other.filter.tags.append("t")
        for req in (pb.ListRecentRequest(page_token="garbage!"), other):
            with pytest.raises(grpc.RpcError) as err:
                vault.stub.ListRecent(req)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith("page_token:")

    def test_negative_scan_cursor_and_purge_ttl(self, vault: Vault) -> None:
        """Negative Scan cursors and negative TTLs are INVALID_ARGUMENT naming the field."""
        with pytest.raises(grpc.RpcError) as err:
            list(vault.stub.Scan(pb.ScanRequest(after_seq=-1)))
        assert (err.value.details() or "").startswith("after_seq:")
        for ttl in (-1, 1e300):  # 1e300 h: the cutoff would leave int64 milliseconds
            with pytest.raises(grpc.RpcError) as err:
                vault.stub.PurgeTTL(pb.PurgeTTLRequest(ttl_hours=ttl))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith("ttl_hours:")

    def test_filter_time_outside_the_timestamp_range(self, vault: Vault) -> None:
        """A filter bound beyond year 9999 (found by the property tests: it overflowed SQLite)
        is INVALID_ARGUMENT naming the bound, on every backend."""
        for bound in ("since", "until"):
            req = pb.ListRecentRequest()
            getattr(req.filter, bound).seconds = 2**62
            with pytest.raises(grpc.RpcError) as err:
                vault.stub.ListRecent(req)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(f"filter.{bound}: is outside")

    def test_an_oversized_tag_filter_is_refused_by_name_on_every_read(self, vault: Vault) -> None:
        """2000 filter tags (which made SQLite fail UNKNOWN 'Expression tree is too large') are
        INVALID_ARGUMENT naming filter.tags and the limit, for ListRecent, Search and Recall; a
        tag longer than an episode's tag can be is refused by its index."""
        vault.stub.PutEpisode(pb.PutEpisodeRequest(episode=good_episode(1)))
        many = [f"t{i}" for i in range(2000)]
        reqs = [
            pb.ListRecentRequest(filter=pb.EpisodeFilter(tags=many)),
            pb.SearchRequest(embedding=[1.0] * 8, filter=pb.EpisodeFilter(tags=many)),
            pb.RecallRequest(
                cue=pb.ConceptActivation(concept_ids=["concept:a"], strengths=[1.0]),
                filter=pb.EpisodeFilter(tags=many),
                no_completion=True,
            ),
        ]
        for req, call in zip(reqs, ("ListRecent", "Search", "Recall"), strict=True):
            with pytest.raises(grpc.RpcError) as err:
                getattr(vault.stub, call)(req)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, call
            detail = err.value.details() or ""
            assert detail.startswith("filter.tags: 2000 tags") and "at most 32" in detail
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.ListRecent(pb.ListRecentRequest(filter=pb.EpisodeFilter(tags=["x" * 200])))
        assert (err.value.details() or "").startswith("filter.tags[0]: is longer than 128")
        assert vault.count() == 1
