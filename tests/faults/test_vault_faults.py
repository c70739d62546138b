"""Faults with real processes and a real Redis: nothing acknowledged is ever lost.

Each test counts what was acknowledged and what is read back afterwards; the counts are printed
(pytest -s shows them) and asserted equal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from mcp_services.common import metric_names as names
from mcp_services.common.health import wait_serving
from mcp_services.fleet.redis_server import redis_argv, wait_ready
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from tests.conftest import free_port, service_environ

pytestmark = pytest.mark.fleet


def episode(eid: str) -> pb.Episode:
    return pb.Episode(
        id=eid,
        tags=["fault"],
        energy=0.5,
        activation=pb.ConceptActivation(concept_ids=["a", "b", "c"], strengths=[0.9, 0.8, 0.1]),
        embedding=[0.25] * 384,
        payload=b"x" * 64,
    )


class Proc:
    """A service (or redis-server) as its own process, restartable with the same environment."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclass
class Redis:
    port: int
    data: Path
    log: Path
    proc: Proc = field(init=False)

    def __post_init__(self) -> None:
        # appendfsync always: an acknowledged write is on disk before Redis answers.
        argv = [*redis_argv(self.port, self.data), "--appendfsync", "always"]
        self.proc = Proc(argv, dict(os.environ), self.log)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc.start()
        assert wait_ready(self.url, 15), self.proc.tail()

    def kill(self) -> None:
        self.proc.signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Redis]:
    data = tmp_path / "redis"
    data.mkdir()
    r = Redis(free_port(), data, tmp_path / "redis.log")
    r.start()
    yield r
    r.proc.stop()


def start_vault(env: dict[str, str], log: Path) -> Proc:
    vault = Proc([sys.executable, "-m", "mcp_services.episodic_vault.server"], env, log).start()
    target = f"127.0.0.1:{env['VAULT_GRPC_PORT']}"
    alive = lambda: vault.proc is not None and vault.proc.poll() is None  # noqa: E731
    assert wait_serving(target, 60, alive), vault.tail()
    return vault


def stub_for(env: dict[str, str]) -> tuple[grpc.Channel, episodic_pb2_grpc.EpisodicVaultStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{env['VAULT_GRPC_PORT']}")
    return channel, episodic_pb2_grpc.EpisodicVaultStub(channel)


def read_back(stub: episodic_pb2_grpc.EpisodicVaultStub, ids: list[str]) -> int:
    found = 0
    for eid in ids:
        try:
            stub.GetEpisode(pb.GetEpisodeRequest(id=eid), timeout=10)
            found += 1
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
    return found


class PutLoop(threading.Thread):
    """Unary puts as fast as one client goes; records acknowledged ids and failure codes."""

    def __init__(self, stub: episodic_pb2_grpc.EpisodicVaultStub, prefix: str) -> None:
        super().__init__(daemon=True)
        self.stub, self.prefix = stub, prefix
        self.acked: list[str] = []
        self.failures: dict[str, int] = {}
        self.failed_ids: dict[str, list[str]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            eid = f"{self.prefix}-{i}"
            i += 1
            try:
                self.stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(eid)), timeout=5)
                self.acked.append(eid)
            except grpc.RpcError as exc:
                code = exc.code().name
                self.failures[code] = self.failures.get(code, 0) + 1
                self.failed_ids.setdefault(code, []).append(eid)
                time.sleep(0.02)

    def wait_acked(self, n: int, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while len(self.acked) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.acked) >= n, f"only {len(self.acked)} acked, failures {self.failures}"


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class TestRedisOutage:
    def test_redis_backend_put_loop_across_a_redis_crash(
        self, tmp_path: Path, private_redis: Redis
    ) -> None:
        """Redis (the vault's store and its event bus) is killed -9 and restarted mid-loop:
        puts are acknowledged or fail UNAVAILABLE, and every acknowledged one is read back."""
        env = service_environ(
            tmp_path / "var",
            VAULT_BACKEND="redis",
            VAULT_REDIS_URL=private_redis.url,
            VAULT_REDIS_KEY_PREFIX="fault:",
            REDIS_URL=private_redis.url,
            VAULT_INDEX_ENABLED="false",
        )
        vault = start_vault(env, tmp_path / "vault.log")
        channel, stub = stub_for(env)
        loop = PutLoop(stub, "r")
        try:
            loop.start()
            loop.wait_acked(100)
            private_redis.kill()
            before_outage = len(loop.acked)
            deadline = time.monotonic() + 10
            while not loop.failures and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            private_redis.start()
            loop.wait_acked(before_outage + 100)
        finally:
            loop.halt.set()
            loop.join(10)
        try:
            assert loop.failures, "the outage produced no failed put: was Redis really down?"
            assert set(loop.failures) == {"UNAVAILABLE"}, loop.failures
            # Restart the vault too: the data lives in Redis's append-only file.
            vault.signal(signal.SIGTERM)
            assert vault.wait() == 0
            vault = start_vault(env, tmp_path / "vault.log")
            found = read_back(stub, loop.acked)
            print(f"redis outage: acknowledged {len(loop.acked)}, read back {found}, "
                  f"failed {loop.failures}")  # fmt: skip
            assert found == len(loop.acked)
        finally:
            channel.close()
            vault.stop()

    def test_event_bus_outage_queues_and_delivers_events(
        self, tmp_path: Path, private_redis: Redis
    ) -> None:
        """With SQLite storage, a Redis outage costs no put; the stored-episode events wait in
        the bounded queue and are all published once Redis is back (none dropped)."""
        env = service_environ(
            tmp_path / "var", REDIS_URL=private_redis.url, VAULT_INDEX_ENABLED="false"
        )
        vault = start_vault(env, tmp_path / "vault.log")
        channel, stub = stub_for(env)
        metrics = f"http://127.0.0.1:{env['VAULT_METRICS_PORT']}/metrics"
        loop = PutLoop(stub, "s")
        try:
            loop.start()
            loop.wait_acked(50)
            private_redis.kill()
            during = len(loop.acked)
            loop.wait_acked(during + 100)  # puts go on without Redis
            private_redis.start()
            loop.wait_acked(len(loop.acked) + 50)
            loop.halt.set()
            loop.join(10)
            assert loop.failures == {}, loop.failures
            published = f'{names.EVENTS_PUBLISHED}{{channel="tori.memory.episode.stored"}}'
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if metric(metrics, published) >= len(loop.acked):
                    break
                time.sleep(0.2)
            sent = metric(metrics, published)
            dropped = metric(metrics, names.EVENTS_DROPPED)
            found = read_back(stub, loop.acked)
            print(f"event bus outage: acknowledged {len(loop.acked)}, read back {found}, "
                  f"events published {sent:.0f}, dropped {dropped:.0f}")  # fmt: skip
            assert found == len(loop.acked)
            assert sent == len(loop.acked)
            assert dropped == 0
        finally:
            loop.halt.set()
            channel.close()
            vault.stop()


class TestVaultCrash:
    BATCH = 200

    def test_kill_9_mid_batch_never_shows_half_a_batch(self, tmp_path: Path) -> None:
        """Streamed batches while the vault is killed -9: every acknowledged batch is whole
        after restart and the batch in flight is all there or not there at all."""
        env = service_environ(tmp_path / "var", VAULT_INDEX_ENABLED="false")
        vault = start_vault(env, tmp_path / "vault.log")
        channel, stub = stub_for(env)
        acked: list[int] = []
        attempted: list[int] = []
        halt = threading.Event()

        def stream(k: int) -> Iterator[pb.PutEpisodeRequest]:
            for j in range(self.BATCH):
                if j % 20 == 0:
                    time.sleep(0.005)  # a stream takes long enough to be cut mid-way
                yield pb.PutEpisodeRequest(episode=episode(f"b{k}-{j}"))

        def writer() -> None:
            k = 0
            while not halt.is_set():
                attempted.append(k)
                try:
                    stub.PutEpisodes(stream(k), timeout=10)
                    acked.append(k)
                except grpc.RpcError:
                    return
                k += 1

        thread = threading.Thread(target=writer, daemon=True)
        try:
            thread.start()
            deadline = time.monotonic() + 60
            while len(acked) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.03)  # into the next stream
            vault.signal(signal.SIGKILL)
            vault.wait()
            halt.set()
            thread.join(15)
            vault = start_vault(env, tmp_path / "vault.log")
            counts = {}
            for k in attempted:
                ids = [f"b{k}-{j}" for j in range(self.BATCH)]
                counts[k] = read_back(stub, ids)
            print(f"kill mid-batch: batches acknowledged {len(acked)} "
                  f"({len(acked) * self.BATCH} episodes), attempted {len(attempted)}, "
                  f"present per batch {counts}")  # fmt: skip
            assert len(acked) >= 5
            for k in acked:
                assert counts[k] == self.BATCH, f"acknowledged batch {k} lost episodes"
            for k, n in counts.items():
                assert n in (0, self.BATCH), f"batch {k} is half-written: {n}/{self.BATCH}"
            stats = stub.GetStats(pb.GetStatsRequest(), timeout=10)
            assert stats.episode_count == sum(counts.values())
        finally:
            halt.set()
            channel.close()
            vault.stop()


class TestGracefulShutdown:
    CLIENTS = 6

    def test_sigterm_under_load(self, tmp_path: Path) -> None:
        """SIGTERM while several clients put: calls end OK or are refused (never INTERNAL or
        UNKNOWN), the process exits 0, and every acknowledged put is there after."""
        env = service_environ(tmp_path / "var", VAULT_INDEX_ENABLED="false")
        vault = start_vault(env, tmp_path / "vault.log")
        channels = [stub_for(env) for _ in range(self.CLIENTS)]
        loops = [PutLoop(stub, f"c{n}") for n, (_, stub) in enumerate(channels)]
        try:
            for loop in loops:
                loop.start()
            for loop in loops:
                loop.wait_acked(30)
            vault.signal(signal.SIGTERM)
            code = vault.wait(60)
            time.sleep(0.3)
            for loop in loops:
                loop.halt.set()
                loop.join(10)
            assert code == 0, vault.tail()
            failures: dict[str, int] = {}
            for loop in loops:
                for k, v in loop.failures.items():
                    failures[k] = failures.get(k, 0) + v
            # New calls are refused UNAVAILABLE. A call that reached the server's transport in
            # the instant shutdown began, before any handler took it, is cancelled by gRPC core
            # (it never ran): at most one per client, and a retry is safe (idempotent ids).
            assert set(failures) <= {"UNAVAILABLE", "CANCELLED"}, failures
            assert failures.get("CANCELLED", 0) <= self.CLIENTS, failures
            vault = start_vault(env, tmp_path / "vault.log")
            acked = [eid for loop in loops for eid in loop.acked]
            found = read_back(channels[0][1], acked)
            cancelled = [e for loop in loops for e in loop.failed_ids.get("CANCELLED", [])]
            cancelled_stored = read_back(channels[0][1], cancelled)
            print(f"sigterm under load: acknowledged {len(acked)}, read back {found}, "
                  f"refused {failures}, cancelled and stored {cancelled_stored}")  # fmt: skip
            assert found == len(acked)
            assert cancelled_stored == 0, "a cancelled call had run: in-flight calls must finish"
        finally:
            for loop in loops:
                loop.halt.set()
            for channel, _ in channels:
                channel.close()
            vault.stop()
