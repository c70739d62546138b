"""PutEpisodes streams are bounded (issue 16, defect 4): memory does not grow with a batch that is
never half-closed, one stream's bytes and the number of open streams are capped, and a refused
stream stores nothing while the vault keeps serving.

The memory test runs the vault as its own process and reads its resident set from /proc.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from tests.conftest import service_environ
from tests.episodic_vault.conftest import VaultFactory, good_episode
from tests.faults.test_vault_faults import start_vault as start_vault_process
from tests.faults.test_vault_faults import stub_for

MB = 1 << 20
STREAMS, PER_STREAM = 4, 500
PAYLOAD = 1_000_000  # under vault.limits.max_payload_bytes (1 MiB)
# The stated bound: the vault's resident set over its idle level while 4 x 500 x 1 MB streams are
# open (the batch-in-memory vault of issue 16 grew by ~2 GB).
RSS_BOUND_MB = 300
STM_MAX_BYTES = 64 * MB


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _spooled_bytes(pid: int, data_dir: Path) -> int:
    """Bytes in the vault's open spool files: open, deleted (anonymous) files in its data
    directory."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(str(data_dir)) and target.endswith("(deleted)"):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            continue  # closed meanwhile
    return total


class HeldStream:
    """A PutEpisodes call that sends its episodes and then holds the stream open (never
    half-closes) until released or cancelled."""

    def __init__(self, stub: Any, episodes: Iterator[pb.Episode]) -> None:
        self.sent = 0
        self.release = threading.Event()
        self.future = stub.PutEpisodes.future(self._requests(episodes), timeout=300)

    def _requests(self, episodes: Iterator[pb.Episode]) -> Iterator[pb.PutEpisodeRequest]:
        for ep in episodes:
            yield pb.PutEpisodeRequest(episode=ep)
            self.sent += 1
        self.release.wait(300)


def big_episodes(stream: int, payload: bytes) -> Iterator[pb.Episode]:
    for i in range(PER_STREAM):
        ep = good_episode(i)
        ep.id = f"s{stream}-{i}"
        ep.payload = payload
        yield ep


@pytest.mark.fleet
class TestStreamMemory:
    def test_four_never_closed_streams_of_500_mb_keep_rss_bounded(self, tmp_path: Path) -> None:
        """4 concurrent PutEpisodes streams of 500 x 1 MB, never half-closed, then cancelled:
        the vault process's peak RSS stays under RSS_BOUND_MB over its idle level, and nothing
        of the cancelled streams is stored; then one such batch completes within the bound."""
        env = service_environ(
            tmp_path / "var",
            VAULT_EMBEDDING_DIM="8",
            VAULT_MAX_STREAM_BYTES=str(1 << 30),  # above 500 MB: the spool, not the budget, holds
            VAULT_MAX_CONCURRENT_STREAMS=str(STREAMS),
            # STM keeps acknowledged episodes in memory up to this (the default is 256 MiB).
            VAULT_STM_MAX_BYTES=str(STM_MAX_BYTES),
        )
        vault = start_vault_process(env, tmp_path / "vault.log")
        channel, stub = stub_for(env)
        assert vault.proc is not None
        pid, data_dir = vault.proc.pid, tmp_path / "var" / "data"
        try:
            stub.GetStats(pb.GetStatsRequest(), timeout=10)
            idle_kb = _status_kb(pid, "VmRSS")
            payload = os.urandom(PAYLOAD)
            streams = [HeldStream(stub, big_episodes(s, payload)) for s in range(STREAMS)]
            peak_kb, deadline = idle_kb, time.monotonic() + 240
            want = STREAMS * PER_STREAM * PAYLOAD
            while _spooled_bytes(pid, data_dir) < want and time.monotonic() < deadline:
                peak_kb = max(peak_kb, _status_kb(pid, "VmRSS"))
                time.sleep(0.1)
            spooled = _spooled_bytes(pid, data_dir)
            assert spooled >= want, f"the vault took {spooled} of {want} bytes; {vault.tail()}"
            assert all(s.sent == PER_STREAM for s in streams)
            peak_kb = max(peak_kb, _status_kb(pid, "VmRSS"), _status_kb(pid, "VmHWM"))
            for s in streams:
                s.future.cancel()
            for s in streams:
                s.release.set()
            deadline = time.monotonic() + 30
            while _spooled_bytes(pid, data_dir) and time.monotonic() < deadline:
                time.sleep(0.1)
            after_kb = _status_kb(pid, "VmRSS")
            grew_mb, after_mb = (peak_kb - idle_kb) / 1024, (after_kb - idle_kb) / 1024
            print(
                f"vault RSS: idle {idle_kb / 1024:.0f} MB, peak +{grew_mb:.0f} MB while "
                f"{spooled / MB:.0f} MiB were streamed, +{after_mb:.0f} MB after cancel"
            )
            assert grew_mb < RSS_BOUND_MB, f"peak RSS grew by {grew_mb:.0f} MB"
            assert after_mb < RSS_BOUND_MB
            assert _spooled_bytes(pid, data_dir) == 0, "a cancelled stream's spool is still open"
            assert stub.GetStats(pb.GetStatsRequest(), timeout=10).episode_count == 0
            # The slots came back, and a whole 500 x 1 MB batch, half-closed, is written from
            # its spool within the same bound.
            done = HeldStream(stub, big_episodes(STREAMS, payload))
            done.release.set()
            assert done.future.result(timeout=240).created == PER_STREAM
            committed_mb = (_status_kb(pid, "VmRSS") - idle_kb) / 1024
            print(f"+{committed_mb:.0f} MB after a 500 x 1 MB batch was written")
            assert committed_mb < RSS_BOUND_MB
            assert stub.GetStats(pb.GetStatsRequest(), timeout=10).episode_count == PER_STREAM
        finally:
            channel.close()
            vault.stop()


def _refused(err: grpc.RpcError, key: str) -> str:
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    details = err.details() or ""
    assert key in details, details
    return details


class TestStreamLimits:
    def test_byte_budget_refuses_the_stream_and_stores_none_of_it(
        self, start_vault: VaultFactory
    ) -> None:
        """A stream over vault.limits.max_stream_bytes is RESOURCE_EXHAUSTED naming the key and
        its value; none of it is stored, what was acknowledged before stays, the vault serves."""
        v = start_vault(vault={"embedding_dim": 8, "limits": {"max_stream_bytes": 64 * 1024}})
        acked = v.stub.PutEpisodes(iter([pb.PutEpisodeRequest(episode=good_episode(0))]))
        assert acked.created == 1

        def heavy() -> Iterator[pb.PutEpisodeRequest]:
            for i in range(1, 10):
                ep = good_episode(i)
                ep.payload = b"p" * 10_000
                yield pb.PutEpisodeRequest(episode=ep)

        with pytest.raises(grpc.RpcError) as err:
            v.stub.PutEpisodes(heavy(), timeout=30)
        details = _refused(err.value, "vault.limits.max_stream_bytes = 65536")
        assert "nothing of it was stored" in details
        assert v.count() == 1
        assert v.stub.GetEpisode(pb.GetEpisodeRequest(id="ep-0")).episode.id == "ep-0"
        after = v.stub.PutEpisodes(iter([pb.PutEpisodeRequest(episode=good_episode(20))]))
        assert after.created == 1 and v.count() == 2

    def test_concurrent_stream_cap_refuses_one_more(self, start_vault: VaultFactory) -> None:
        """With vault.limits.max_concurrent_streams open streams, one more is RESOURCE_EXHAUSTED
        naming the key; the open ones then finish and are stored, and nothing else is."""
        v = start_vault(vault={"embedding_dim": 8, "limits": {"max_concurrent_streams": 2}})
        held = [HeldStream(v.stub, iter([good_episode(i)])) for i in range(2)]
        # The two calls take their slots when the vault sees them; until then an empty batch
        # (which stores nothing) is served, so try until it is refused.
        deadline = time.monotonic() + 20
        refused: grpc.RpcError | None = None
        while refused is None and time.monotonic() < deadline:
            try:
                v.stub.PutEpisodes(iter([]), timeout=10)
                time.sleep(0.05)
            except grpc.RpcError as exc:
                refused = exc
        assert refused is not None, "a third stream was never refused"
        _refused(refused, "vault.limits.max_concurrent_streams = 2")
        for h in held:
            h.release.set()
        assert [h.future.result(timeout=30).created for h in held] == [1, 1]
        assert v.count() == 2
        assert v.stub.PutEpisodes(iter([pb.PutEpisodeRequest(episode=good_episode(5))])).created
        assert v.count() == 3
