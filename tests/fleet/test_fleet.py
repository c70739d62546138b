"""The local fleet as `make up` starts it: real processes, a real private Redis, free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config import load_config
from mcp_services.common.health import check
from mcp_services.fleet.processes import FleetState
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from tests.conftest import service_environ

pytestmark = pytest.mark.fleet

PORTS = {
    "episodic-vault": ("VAULT_GRPC_PORT", "VAULT_METRICS_PORT"),
    "sleep-scheduler": ("SLEEP_GRPC_PORT", "SLEEP_METRICS_PORT"),
    "sparse-pruner": ("PRUNER_GRPC_PORT", "PRUNER_METRICS_PORT"),
    "koopman-learner": ("KOOPMAN_GRPC_PORT", "KOOPMAN_METRICS_PORT"),
}


def fleet(cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_services.fleet", cmd],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def processes_of(var_dir: str) -> list[int]:
    """Live (non-zombie) processes whose environment names this fleet's var dir."""
    marker = f"TORI_VAR_DIR={var_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:
            continue
        pids.append(int(entry.name))
    return pids


def make_env(tmp_path: Path, name: str) -> dict[str, str]:
    return service_environ(tmp_path / name)


def vault_stub(env: dict[str, str]) -> tuple[grpc.Channel, episodic_pb2_grpc.EpisodicVaultStub]:
    """A client of the fleet's vault sending the fleet's own key, as every CLI does."""
    channel = ClientFactory.of(load_config(environ=env)).channel("episodic-vault")
    return channel, episodic_pb2_grpc.EpisodicVaultStub(channel)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = make_env(tmp_path, "fleet-a")
    up = fleet("up", env)
    assert up.returncode == 0, up.stderr + up.stdout
    try:
        yield env
    finally:
        down = fleet("down", env)
        assert down.returncode == 0, down.stderr
        assert processes_of(env["TORI_VAR_DIR"]) == [], "stray processes after down"


def vault_pid(env: dict[str, str]) -> int:
    recs = FleetState(Path(env["TORI_VAR_DIR"])).load()
    return next(r.pid for r in recs if r.name == "episodic-vault")


class TestFleet:
    def test_every_service_is_healthy_and_serves_metrics(self, running: dict[str, str]) -> None:
        """After up, each service reports SERVING on its port and answers on its metrics port;
        status agrees."""
        for name, (grpc_var, metrics_var) in PORTS.items():
            assert check(f"127.0.0.1:{running[grpc_var]}") == "SERVING", name
            url = f"http://127.0.0.1:{running[metrics_var]}/metrics"
            body = urllib.request.urlopen(url, timeout=5).read().decode()
            assert f'tori_service_info{{environment="test",service="{name}"}} 1.0' in body
        assert (
            "vault_episode_count"
            in urllib.request.urlopen(
                f"http://127.0.0.1:{running['VAULT_METRICS_PORT']}/metrics", timeout=5
            )
            .read()
            .decode()
        )
        status = fleet("status", running)
        assert status.returncode == 0
        # The four services and the MCP gateway (its /healthz).
        assert status.stdout.count("SERVING") == 5 and "PONG" in status.stdout
        assert "mcp-gateway" in status.stdout

    def test_put_get_loop_then_restart_reads_everything_back(self, running: dict[str, str]) -> None:
        """vault-cli put-get-loop 50 reports 50/50; after the fleet restarts, all 50 read back."""
        loop = subprocess.run(
            [sys.executable, "-m", "mcp_services.episodic_vault.cli", "put-get-loop", "50", "--json"],
            env=running, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert loop.returncode == 0, loop.stderr
        summary = json.loads(loop.stdout)
        assert (summary["ok"], summary["failed"]) == (50, 0)
        channel, stub = vault_stub(running)
        before = [r.episode for r in stub.Scan(pb.ScanRequest())]
        channel.close()
        assert len(before) == 50
        assert fleet("down", running).returncode == 0
        up = fleet("up", running)
        assert up.returncode == 0, up.stderr
        channel, stub = vault_stub(running)
        after = [r.episode for r in stub.Scan(pb.ScanRequest())]
        # STM is the in-process hot tier: after a restart the same episodes are served from the
        # durable tier (MTM); everything else, server fields included, is identical.
        assert {ep.tier for ep in before} == {pb.TIER_STM}
        assert {ep.tier for ep in after} == {pb.TIER_MTM}
        for ep in before:
            got = stub.GetEpisode(pb.GetEpisodeRequest(id=ep.id)).episode
            got.ClearField("tier")
            ep.ClearField("tier")
            assert got == ep
        channel.close()
        for ep in after:
            ep.ClearField("tier")
        assert after == before

    def test_kill_9_during_put_loop_loses_no_acknowledged_episode(
        self, running: dict[str, str]
    ) -> None:
        """SIGKILL of the vault mid-loop: every put acknowledged before the kill reads back."""
        channel, stub = vault_stub(running)
        acked: list[str] = []
        failed: list[str] = []
        kill_after = 150
        killed = threading.Event()

        def loop() -> None:
            for i in range(5000):
                ep = pb.Episode(
                    id=f"k9-{i:05d}",
                    activation=pb.ConceptActivation(concept_ids=[f"c{i % 50}"], strengths=[1.0]),
                )
                try:
                    stub.PutEpisode(pb.PutEpisodeRequest(episode=ep), timeout=5)
                    acked.append(ep.id)
                except grpc.RpcError:
                    failed.append(ep.id)
                    if len(failed) >= 5:
                        return
                if len(acked) == kill_after:
                    killed.set()

        t = threading.Thread(target=loop)
        t.start()
        assert killed.wait(60)
        os.kill(vault_pid(running), signal.SIGKILL)
        t.join(120)
        channel.close()
        assert len(acked) >= kill_after and len(failed) >= 1
        down = fleet("down", running)
        assert "episodic-vault   pid" in down.stdout and "not running" in down.stdout
        assert fleet("up", running).returncode == 0
        channel, stub = vault_stub(running)
        readable = 0
        for episode_id in acked:
            got = stub.GetEpisode(pb.GetEpisodeRequest(id=episode_id)).episode
            readable += got.id == episode_id
        channel.close()
        print(f"kill -9: acknowledged {len(acked)}, read back {readable}")
        assert readable == len(acked)

    def test_two_fleets_on_other_ports_do_not_interfere(
        self, running: dict[str, str], tmp_path: Path
    ) -> None:
        """A second fleet with its own ports and var dir runs beside the first without sharing data,
        and stopping it leaves the first running."""
        other = make_env(tmp_path, "fleet-b")
        up = fleet("up", other)
        assert up.returncode == 0, up.stderr
        try:
            ch_a, a = vault_stub(running)
            ch_b, b = vault_stub(other)
            a.PutEpisode(pb.PutEpisodeRequest(episode=pb.Episode(id="only-in-a")))
            assert a.GetStats(pb.GetStatsRequest()).episode_count == 1
            assert b.GetStats(pb.GetStatsRequest()).episode_count == 0
            ch_a.close()
            ch_b.close()
        finally:
            assert fleet("down", other).returncode == 0
        assert processes_of(other["TORI_VAR_DIR"]) == []
        assert fleet("status", running).returncode == 0

    def test_auth_is_on_with_a_private_key_file(self, running: dict[str, str]) -> None:
        """The fleet made a 0600 admin key file under its var dir; a call without a key is
        UNAUTHENTICATED on every service, and the CLIs' key (the file's) is accepted."""
        key_file = Path(running["TORI_VAR_DIR"]) / "secrets" / "api_keys"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_file.parent.stat().st_mode & 0o777 == 0o700
        assert key_file.read_text().splitlines()[-1].endswith(" admin")
        for name, (grpc_var, _) in PORTS.items():
            with grpc.insecure_channel(f"127.0.0.1:{running[grpc_var]}") as ch:
                # GetConfig on the others, GetStats on the vault: any RPC but health needs a key.
                service, method = {
                    "episodic-vault": ("tori.episodic.v1.EpisodicVault", "GetStats"),
                    "sleep-scheduler": ("tori.sleep.v1.SleepScheduler", "GetConfig"),
                    "sparse-pruner": ("tori.pruner.v1.SparsePruner", "GetConfig"),
                    "koopman-learner": ("tori.koopman.v1.KoopmanLearner", "GetConfig"),
                }[name]
                with pytest.raises(grpc.RpcError) as err:
                    ch.unary_unary(f"/{service}/{method}")(b"", timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        channel, stub = vault_stub(running)
        assert stub.GetStats(pb.GetStatsRequest()).episode_count == 0
        channel.close()
        # The CLIs find the fleet's key by themselves: nobody types one.
        for argv, code in (
            (["mcp_services.episodic_vault.cli", "stats"], 0),
            (["mcp_services.sleep_scheduler.trigger", "--once"], 0),
            (["mcp_services.koopman_learner.status"], 1),  # 1: it answered "no model yet"
            (["mcp_services.ops", "verify-consistency", "--services"], 0),
        ):
            done = subprocess.run(
                [sys.executable, "-m", *argv], env=running, capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip
            assert done.returncode == code, (argv, done.stdout, done.stderr)
            assert "UNAUTHENTICATED" not in done.stdout + done.stderr

    def test_up_twice_is_refused_while_running(self, running: dict[str, str]) -> None:
        """A second `up` on a running fleet says so and starts nothing."""
        again = fleet("up", running)
        assert again.returncode == 1 and "already running" in again.stderr


class TestFleetFailures:
    def test_configured_keys_without_an_admin_key_are_refused(self, tmp_path: Path) -> None:
        """A configured key file with no admin key stops up before any service starts, saying
        why (the services call each other with an admin key), never showing the key."""
        keys = tmp_path / "keys"
        keys.write_text("only-a-reader-key read\n")
        env = make_env(tmp_path, "fleet-d")
        env["TORI_API_KEYS_FILE"] = str(keys)
        up = fleet("up", env)
        assert up.returncode == 1
        assert "no admin key" in up.stderr and "only-a-reader-key" not in up.stderr
        assert processes_of(env["TORI_VAR_DIR"]) == []

    def test_taken_port_fails_up_naming_the_port_and_leaves_nothing(self, tmp_path: Path) -> None:
        """When a service's port is taken, up exits 1 with the port in the message and stops
        what it had started."""
        env = make_env(tmp_path, "fleet-c")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            env["SLEEP_GRPC_PORT"] = str(port)
            up = fleet("up", env)
        assert up.returncode == 1
        assert f"gRPC port {port}" in up.stderr and "sleep-scheduler" in up.stderr
        assert processes_of(env["TORI_VAR_DIR"]) == []
        assert fleet("status", env).returncode == 3
