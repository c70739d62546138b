"""The vault over gRPC, against a real aio server on free ports."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ulid import ULID

from mcp_services.common.event_bus import EPISODE_STORED, decode_event
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.gen.tori.events.v1 import events_pb2
from tests.conftest import free_port, scrape_until
from tests.episodic_vault.conftest import Vault, VaultFactory, good_episode


def put(vault: Vault, ep: pb.Episode) -> pb.PutResult:
    result: pb.PutResult = vault.stub.PutEpisode(pb.PutEpisodeRequest(episode=ep)).result
    return result


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


class TestPutAndGet:
    def test_round_trip_keeps_every_client_field(self, vault: Vault) -> None:
        """What GetEpisode returns equals what was put, plus the server's fields."""
        ep = good_episode(1)
        ep.timestamp.FromMilliseconds(1_700_000_000_123)
        res = put(vault, ep)
        got = vault.stub.GetEpisode(pb.GetEpisodeRequest(id="ep-1")).episode
        assert got.seq == res.seq and got.content_hash == res.content_hash
        # Just written: held in the hot tier (STM), durable underneath.
        assert got.tier == pb.TIER_STM and not got.consolidated and got.stored_at.seconds > 0
        for name in ("tier", "consolidated", "stored_at", "seq", "content_hash", "graph_version"):
            got.ClearField(name)
        assert got == ep

    def test_trace_episode_round_trips(self, vault: Vault) -> None:
        """A short trace of timed frames is stored and read back frame by frame."""
        ep = good_episode(2)
        ep.ClearField("activation")
        for k in range(3):
            f = ep.trace.add(offset_ms=10 * k)
            f.activation.concept_ids.extend([f"c{k}", "c9"])
            f.activation.strengths.extend([0.5, 1.0])
        put(vault, ep)
        got = vault.stub.GetEpisode(pb.GetEpisodeRequest(id="ep-2")).episode
        assert list(got.trace) == list(ep.trace)

    def test_server_made_ids_are_ulids_in_time_order(self, vault: Vault) -> None:
        """Without an id the server makes a ULID; later puts get later ids."""
        ids = []
        for _ in range(3):
            ep = good_episode()
            ep.id = ""
            ids.append(put(vault, ep).id)
            time.sleep(0.002)
        assert [str(ULID.from_str(i)) for i in ids] == ids
        assert ids == sorted(ids)

    def test_get_unknown_is_not_found(self, vault: Vault) -> None:
        """An id nobody stored is NOT_FOUND naming the id."""
        with pytest.raises(grpc.RpcError) as err:
            vault.stub.GetEpisode(pb.GetEpisodeRequest(id="nobody"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'nobody'" in (err.value.details() or "")

    def test_batch_put_reports_created_and_existing(self, vault: Vault) -> None:
        """A streamed batch stores new episodes and reports repeats as existing."""
        put(vault, good_episode(0))
        resp = vault.stub.PutEpisodes(
            iter(pb.PutEpisodeRequest(episode=good_episode(i)) for i in range(5))
        )
        assert (resp.created, resp.existing) == (4, 1)
        assert [r.id for r in resp.results] == [f"ep-{i}" for i in range(5)]
        assert vault.count() == 5


class TestListingAndScan:
    def test_list_recent_pages_through_everything_newest_first(self, vault: Vault) -> None:
        """Following next_page_token visits each episode once, newest first, then ends."""
        for i in range(7):
            ep = good_episode(i)
            ep.timestamp.FromMilliseconds(1_700_000_000_000 + i)
            put(vault, ep)
        ids: list[str] = []
        token = ""
        while True:
            page = vault.stub.ListRecent(pb.ListRecentRequest(page_size=3, page_token=token))
            ids += [e.id for e in page.episodes]
            token = page.next_page_token
            if not token:
                break
        assert ids == [f"ep-{i}" for i in reversed(range(7))]

    def test_list_recent_filters_by_tag_and_source(self, vault: Vault) -> None:
        """Filters narrow the listing: tags must all be present; source type must match."""
        a, b = good_episode(1), good_episode(2)
        b.tags.append("special")
        b.source.type = "agent"
        put(vault, a)
        put(vault, b)
        req = pb.ListRecentRequest(filter=pb.EpisodeFilter(tags=["t", "special"]))
        assert [e.id for e in vault.stub.ListRecent(req).episodes] == ["ep-2"]
        req = pb.ListRecentRequest(filter=pb.EpisodeFilter(source_type="test"))
        assert [e.id for e in vault.stub.ListRecent(req).episodes] == ["ep-1"]

    def test_scan_streams_from_a_cursor_in_storage_order(self, vault: Vault) -> None:
        """Scan after a seq returns later episodes in seq order, across internal chunks."""
        vault.stub.PutEpisodes(
            iter(pb.PutEpisodeRequest(episode=good_episode(i)) for i in range(1200))
        )
        all_eps = [r.episode for r in vault.stub.Scan(pb.ScanRequest())]
        assert [e.seq for e in all_eps] == sorted(e.seq for e in all_eps) and len(all_eps) == 1200
        cursor = all_eps[599].seq
        rest = [r.episode.id for r in vault.stub.Scan(pb.ScanRequest(after_seq=cursor, limit=550))]
        assert rest == [e.id for e in all_eps[600:1150]]


class TestLifecycle:
    def test_stats_count_what_is_stored(self, vault: Vault) -> None:
        """GetStats reports counts, bytes, the last seq and the backend."""
        for i in range(3):
            put(vault, good_episode(i))
        s = vault.stub.GetStats(pb.GetStatsRequest())
        assert s.episode_count == 3 and s.unconsolidated_count == 3 and s.size_bytes > 0
        assert s.last_seq >= 3 and s.backend == vault.settings.vault.backend
        # Fresh puts are hot (STM); each episode is counted in exactly one tier.
        assert [(t.tier, t.episode_count) for t in s.tiers] == [(pb.TIER_STM, 3)]

    def test_purge_ttl_dry_run_then_purge_keeps_referenced(self, vault: Vault) -> None:
        """A dry run counts without deleting; a purge removes expired episodes but those with
        ref_count >= 3."""
        kept = good_episode(9)
        kept.ref_count = 3
        for ep in (good_episode(1), good_episode(2), kept):
            put(vault, ep)
        time.sleep(0.01)
        ttl = 1e-6  # hours: everything stored before now is past it
        dry = vault.stub.PurgeTTL(pb.PurgeTTLRequest(ttl_hours=ttl, dry_run=True))
        assert dry.purged == 2 and dry.dry_run and vault.count() == 3
        assert vault.stub.PurgeTTL(pb.PurgeTTLRequest(ttl_hours=ttl)).purged == 2
        assert [e.id for e in vault.stub.ListRecent(pb.ListRecentRequest()).episodes] == ["ep-9"]

    def test_purge_default_ttl_is_48_hours(self, vault: Vault) -> None:
        """With no ttl given, fresh episodes survive and the cutoff is 48 h back."""
        put(vault, good_episode(1))
        resp = vault.stub.PurgeTTL(pb.PurgeTTLRequest())
        assert resp.purged == 0
        assert abs(time.time() - 48 * 3600 - resp.cutoff.seconds) < 60

    def test_delete_forgets_and_is_idempotent(self, vault: Vault) -> None:
        """Delete removes the episode; deleting again reports deleted=false."""
        put(vault, good_episode(1))
        assert vault.stub.DeleteEpisode(pb.DeleteEpisodeRequest(id="ep-1")).deleted
        assert not vault.stub.DeleteEpisode(pb.DeleteEpisodeRequest(id="ep-1")).deleted
        assert vault.count() == 0

    def test_restart_keeps_episodes_with_sqlite(
        self, start_vault: VaultFactory, make_settings: object
    ) -> None:
        """Stopping and starting a SQLite vault on the same file reads every episode back."""
        settings = make_settings(vault={"embedding_dim": 8})  # type: ignore[operator]
        v1 = start_vault(settings)
        for i in range(20):
            put(v1, good_episode(i))
        before = [r.episode for r in v1.stub.Scan(pb.ScanRequest())]
        v1.channel.close()
        v1.server.stop()
        v2 = start_vault(settings)
        after = [r.episode for r in v2.stub.Scan(pb.ScanRequest())]
        # The hot tier is in-process: after a restart the episodes are served from MTM.
        assert {e.tier for e in before} == {pb.TIER_STM}
        assert {e.tier for e in after} == {pb.TIER_MTM}
        for e in before + after:
            e.ClearField("tier")
        assert after == before


class TestObservability:
    def test_health_and_reflection(self, vault: Vault) -> None:
        """The server reports SERVING overall and for the vault service, and offers reflection."""
        health = health_pb2_grpc.HealthStub(vault.channel)
        for svc in ("", "tori.episodic.v1.EpisodicVault"):
            status = health.Check(health_pb2.HealthCheckRequest(service=svc)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(vault.channel)
        resp = next(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in resp.list_services_response.service}
        assert {"tori.episodic.v1.EpisodicVault", "grpc.health.v1.Health"} <= names

    def test_domain_and_grpc_metrics_follow_the_calls(self, vault: Vault) -> None:
        """Episode count, size and latency histograms move with puts; refused calls are counted
        with their status code."""
        for i in range(4):
            put(vault, good_episode(i))
        vault.stub.GetEpisode(pb.GetEpisodeRequest(id="ep-1"))
        with pytest.raises(grpc.RpcError):
            vault.stub.GetEpisode(pb.GetEpisodeRequest(id="missing"))
        text = scrape_until(vault.metrics_url, 'grpc_code="NOT_FOUND"')
        assert metric_value(text, "vault_episode_count") == 4
        size = metric_value(text, "vault_size_bytes")
        assert size > 0 and metric_value(text, "vault_size_mb") == pytest.approx(size / 2**20)
        assert 'vault_put_seconds_count{backend="' in text
        assert "vault_get_seconds_count" in text
        started = (
            'grpc_server_started_total{grpc_method="PutEpisode",'
            'grpc_service="tori.episodic.v1.EpisodicVault",grpc_type="unary"} 4.0'
        )
        assert started in text
        not_found = (
            'grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="GetEpisode",'
            'grpc_service="tori.episodic.v1.EpisodicVault",grpc_type="unary"} 1.0'
        )
        assert not_found in text
        assert 'grpc_server_handling_seconds_bucket{grpc_method="GetEpisode"' in text


class TestEvents:
    def test_each_new_episode_is_announced_once(
        self, start_vault: VaultFactory, redis_url: str
    ) -> None:
        """A created episode is published on tori.memory.episode.stored as a typed event with its
        id and seq; an idempotent repeat is not announced again."""
        v = start_vault(redis={"url": redis_url}, vault={"embedding_dim": 8})
        client = redis.Redis.from_url(redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(EPISODE_STORED)
        res = put(v, good_episode(1))
        put(v, good_episode(1))
        put(v, good_episode(2))
        events: list[events_pb2.EpisodeStored] = []
        deadline = time.monotonic() + 10
        while len(events) < 2 and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.5)
            if msg:
                ev = decode_event(EPISODE_STORED, msg["data"])
                assert isinstance(ev, events_pb2.EpisodeStored)
                events.append(ev)
        time.sleep(0.3)
        assert pubsub.get_message(timeout=0.2) is None  # no third event: the repeat was silent
        assert [e.episode_id for e in events] == ["ep-1", "ep-2"]
        assert events[0].seq == res.seq and events[0].concept_count == 2
        assert events[0].header.source_service == "episodic-vault"
        pubsub.close()
        client.close()

    def test_vault_keeps_serving_without_redis(self, start_vault: VaultFactory) -> None:
        """With Redis unreachable, puts are still acknowledged and the bus reports disconnected."""
        dead = f"redis://127.0.0.1:{free_port()}/0"
        v = start_vault(redis={"url": dead, "connect_timeout_s": 0.2}, vault={"embedding_dim": 8})
        for i in range(5):
            assert put(v, good_episode(i)).status == pb.PUT_STATUS_CREATED
        assert v.count() == 5
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = metrics_text(v.metrics_url)
            if "tori_event_bus_connected 0.0" in text:
                break
            time.sleep(0.1)
        assert "tori_event_bus_connected 0.0" in text
