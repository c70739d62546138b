"""The shared client factory: every inter-service caller dials the callee's dial address and sends
the caller's key, because its channel comes from mcp_services/common/clients.py.

Each caller is pointed at a recording gRPC server that listens only on 127.0.0.3 (a loopback
address nothing else uses), with the service's listen host set to the wildcard 0.0.0.0: a client
that still turned the listen host into 127.0.0.1 would never reach the recorder.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from mcp_services.common.clients import (
    ClientFactory,
    UnknownService,
    caller_key,
    dial_address,
    metrics_address,
)
from mcp_services.common.config import ConfigError, load_config
from mcp_services.common.config_schema import Settings
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault import cli as vault_cli
from mcp_services.episodic_vault.adapters.completion import completion_address
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gateway import metrics as gateway_metrics
from mcp_services.gateway.backends import CallSpec, ServiceClients
from mcp_services.gateway.routing import primary_targets
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.koopman.v1 import koopman_pb2
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.koopman_learner.server import KoopmanLearnerService
from mcp_services.loadgen import cli as loadgen_cli
from mcp_services.sleep_scheduler import trigger
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from mcp_services.sparse_pruner import prune
from mcp_services.sparse_pruner.server import SparsePrunerService
from tests.conftest import service_environ

KEY = "k-fleet-3f9a"
HOST = "127.0.0.3"
SERVICE_ENV = {
    "episodic_vault": "VAULT",
    "sleep_scheduler": "SLEEP",
    "sparse_pruner": "PRUNER",
    "koopman_learner": "KOOPMAN",
}
UNARY = {
    "/tori.episodic.v1.EpisodicVault/GetStats",
    "/tori.episodic.v1.EpisodicVault/PutEpisode",
    "/tori.sleep.v1.SleepScheduler/Complete",
    "/tori.sleep.v1.SleepScheduler/StartConsolidation",
    "/tori.sleep.v1.SleepScheduler/ListGraphVersions",
    "/tori.pruner.v1.SparsePruner/TriggerPruning",
}


@dataclass
class Call:
    method: str
    metadata: dict[str, str]
    time_remaining: float | None = None


@dataclass
class Recorder:
    """A gRPC server on HOST that records every call and answers it with ``code``."""

    port: int
    calls: list[Call] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def methods(self) -> list[str]:
        with self.lock:
            return [c.method for c in self.calls]

    def keyed(self, method_prefix: str) -> list[Call]:
        """Recorded calls to methods starting with ``method_prefix``."""
        with self.lock:
            return [c for c in self.calls if c.method.startswith(method_prefix)]


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, rec: Recorder) -> None:
        self._rec = rec

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        md = {k: str(v) for k, v in details.invocation_metadata or ()}
        call = Call(details.method, md)
        with self._rec.lock:
            self._rec.calls.append(call)
        if details.method not in UNARY:
            return None  # UNIMPLEMENTED; the call is recorded all the same

        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            call.time_remaining = context.time_remaining()
            context.abort(self._rec.code, "recorded by the test's recorder")
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    server = grpc.server(ThreadPoolExecutor(4))
    rec = Recorder(port)
    server.add_generic_rpc_handlers([_Handler(rec)])
    server.add_insecure_port(rec.address)
    server.start()
    yield rec
    server.stop(0)


def fleet_env(tmp_path: Path, rec: Recorder, key_file: bool = True) -> dict[str, str]:
    """The test overlay with every service listening on 0.0.0.0 and dialled at the recorder."""
    env = service_environ(tmp_path / "var")
    for prefix in SERVICE_ENV.values():
        env[f"{prefix}_HOST"] = "0.0.0.0"
        env[f"{prefix}_ADDRESS"] = rec.address
    if key_file:
        path = tmp_path / "api_keys"
        path.write_text(f"# the fleet's key\n{KEY}\n")
        env["TORI_API_KEYS_FILE"] = str(path)
    return env


def settings_for(env: dict[str, str], **overrides: Any) -> Settings:
    return load_config(environ=env, overrides=overrides)


def assert_keyed(rec: Recorder, prefix: str) -> None:
    """At least one call reached the recorder on ``prefix`` and every one carried the key."""
    calls = rec.keyed(prefix)
    assert calls, f"no call to {prefix} reached {rec.address}; saw {rec.methods()}"
    for c in calls:
        assert c.metadata.get("authorization") == f"Bearer {KEY}", c


class TestDialAddress:
    def test_the_address_setting_wins_over_the_listen_host(self, tmp_path: Path) -> None:
        """services.X.address is dialled as given; without it a wildcard listen host is dialled
        on loopback and any other host as it is."""
        env = service_environ(tmp_path)
        env |= {"VAULT_HOST": "0.0.0.0", "SLEEP_HOST": "10.1.2.3"}
        env |= {"PRUNER_ADDRESS": "sparse-pruner:50053"}
        s = load_config(environ=env)
        assert dial_address(s, "episodic_vault") == f"127.0.0.1:{env['VAULT_GRPC_PORT']}"
        assert dial_address(s, "sleep-scheduler") == f"10.1.2.3:{env['SLEEP_GRPC_PORT']}"
        assert dial_address(s, "sparse_pruner") == "sparse-pruner:50053"
        assert metrics_address(s, "episodic_vault").startswith("127.0.0.1:")

    def test_the_container_configuration_dials_compose_service_names(self) -> None:
        """In the container overlay every service is dialled by its compose name and recall
        completes through the scheduler's."""
        s = load_config(env="container", environ={})
        assert [dial_address(s, n) for n in SERVICE_ENV] == [
            "episodic-vault:50051",
            "sleep-scheduler:50052",
            "sparse-pruner:50053",
            "koopman-learner:50054",
        ]
        assert completion_address(s) == "sleep-scheduler:50052"
        assert s.services.episodic_vault.host == "0.0.0.0"

    def test_completion_is_on_by_default_and_off_only_when_asked(self, tmp_path: Path) -> None:
        """An empty scheduler_address means the fleet's own scheduler; "off" means none."""
        env = service_environ(tmp_path)
        on = load_config(environ=env)
        assert completion_address(on) == f"127.0.0.1:{env['SLEEP_GRPC_PORT']}"
        off = load_config(
            environ=env, overrides={"vault": {"recall": {"scheduler_address": "off"}}}
        )
        assert completion_address(off) == ""

    def test_a_bad_address_is_refused_naming_the_key(self, tmp_path: Path) -> None:
        """An address that is not host:port stops start-up with the key and the fix."""
        env = service_environ(tmp_path) | {"VAULT_ADDRESS": "episodic-vault"}
        with pytest.raises(ConfigError, match=r"services\.episodic_vault\.address.*host:port"):
            load_config(environ=env)

    def test_an_unknown_service_name_is_refused(self, tmp_path: Path) -> None:
        """A caller naming no service of the fleet is told the names there are."""
        s = load_config(environ=service_environ(tmp_path))
        with pytest.raises(UnknownService, match="episodic-vault"):
            dial_address(s, "vault")


class TestCallerKey:
    def test_explicit_then_environment_then_the_fleet_key_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--api-key beats TORI_API_KEY, which beats the first key of auth.api_keys_file."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        keys = tmp_path / "keys"
        keys.write_text("\n# comment\nfirst\nsecond\n")
        s = load_config(environ=service_environ(tmp_path, TORI_API_KEYS_FILE=str(keys)))
        assert caller_key(s) == "first"
        monkeypatch.setenv("TORI_API_KEY", "from-env")
        assert caller_key(s) == "from-env"
        assert caller_key(s, "explicit") == "explicit"
        monkeypatch.delenv("TORI_API_KEY")
        assert caller_key(load_config(environ=service_environ(tmp_path))) is None


class TestChannel:
    def test_every_call_carries_the_key_and_unary_calls_a_default_deadline(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A blocking channel adds the key and, when the call gives none, the default deadline."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        s = settings_for(fleet_env(tmp_path, recorder))
        clients = ClientFactory.of(s)
        with clients.channel("episodic-vault") as ch:
            stub = episodic_pb2_grpc.EpisodicVaultStub(ch)
            with pytest.raises(grpc.RpcError):
                stub.GetStats(episodic_pb2.GetStatsRequest())
        assert_keyed(recorder, "/tori.episodic.v1.EpisodicVault/GetStats")
        remaining = recorder.keyed("/tori.episodic.v1.EpisodicVault/GetStats")[0].time_remaining
        # The deadline travels as a grpc-timeout header the server turns back into a time; under
        # load the two clocks' reading can put it a little past the default (30.098 s was seen),
        # so the check is "the default, not none and not another": within 10% of it.
        assert remaining is not None and 0 < remaining <= clients.default_timeout_s * 1.1

    def test_a_key_the_call_sets_itself_is_kept(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Metadata with its own key is sent as given, not doubled."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        clients = ClientFactory.of(settings_for(fleet_env(tmp_path, recorder)))
        with clients.channel("episodic_vault") as ch, pytest.raises(grpc.RpcError):
            episodic_pb2_grpc.EpisodicVaultStub(ch).GetStats(
                episodic_pb2.GetStatsRequest(), metadata=[("x-api-key", "own")]
            )
        (call,) = recorder.keyed("/tori.episodic.v1.EpisodicVault/GetStats")
        assert call.metadata.get("x-api-key") == "own" and "authorization" not in call.metadata

    def test_only_idempotent_calls_are_retried(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """On UNAVAILABLE a read is tried three times, a put once; with retries off, once."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        recorder.code = grpc.StatusCode.UNAVAILABLE
        clients = ClientFactory.of(settings_for(fleet_env(tmp_path, recorder)))
        ep = episodic_pb2.Episode(source=episodic_pb2.Source(type="t"))
        with clients.channel("episodic_vault") as ch:
            stub = episodic_pb2_grpc.EpisodicVaultStub(ch)
            with pytest.raises(grpc.RpcError) as read:
                stub.GetStats(episodic_pb2.GetStatsRequest())
            with pytest.raises(grpc.RpcError) as write:
                stub.PutEpisode(episodic_pb2.PutEpisodeRequest(episode=ep))
        assert read.value.code() == write.value.code() == grpc.StatusCode.UNAVAILABLE
        with clients.channel("episodic_vault", retries=False) as ch, pytest.raises(grpc.RpcError):
            episodic_pb2_grpc.EpisodicVaultStub(ch).GetStats(episodic_pb2.GetStatsRequest())
        m = recorder.methods()
        assert m.count("/tori.episodic.v1.EpisodicVault/GetStats") == 3 + 1
        assert m.count("/tori.episodic.v1.EpisodicVault/PutEpisode") == 1

    def test_an_asyncio_channel_carries_the_key_on_streams_too(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The asyncio channel adds the key to unary and server-streaming calls alike."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        clients = ClientFactory.of(settings_for(fleet_env(tmp_path, recorder)))

        async def go() -> None:
            async with clients.aio_channel("episodic_vault") as ch:
                stub = episodic_pb2_grpc.EpisodicVaultStub(ch)
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.GetStats(episodic_pb2.GetStatsRequest())
                with pytest.raises(grpc.aio.AioRpcError):
                    async for _ in stub.Scan(episodic_pb2.ScanRequest(), timeout=5):
                        pass

        asyncio.run(go())
        assert_keyed(recorder, "/tori.episodic.v1.EpisodicVault/GetStats")
        assert_keyed(recorder, "/tori.episodic.v1.EpisodicVault/Scan")


class TestEveryInterServiceClient:
    """Each service's client of another, started as the service starts it."""

    def test_the_vault_completes_recall_through_the_scheduler_address(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The vault's completion client dials services.sleep_scheduler.address with its key."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        env = fleet_env(tmp_path, recorder)
        env.pop("VAULT_ADDRESS")
        s = settings_for(env, vault={"backend": "memory", "embedding_dim": 8})
        with (
            ServerThread("episodic-vault", "episodic_vault", VaultService, s) as srv,
            grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}") as ch,
        ):
            resp = episodic_pb2_grpc.EpisodicVaultStub(ch).Recall(
                episodic_pb2.RecallRequest(
                    cue=episodic_pb2.ConceptActivation(concept_ids=["a"], strengths=[1.0])
                ),
                metadata=[("authorization", f"Bearer {KEY}")],
                timeout=10,
            )
        assert resp.completion == episodic_pb2.COMPLETION_UNAVAILABLE
        assert recorder.address in resp.completion_detail
        assert_keyed(recorder, "/tori.sleep.v1.SleepScheduler/Complete")

    def test_the_scheduler_reads_the_vault_at_its_address(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The scheduler's vault client dials services.episodic_vault.address with its key."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        env = fleet_env(tmp_path, recorder)
        env.pop("SLEEP_ADDRESS")
        s = settings_for(env, sleep_scheduler={"pressure_threshold": 0})
        with (
            ServerThread("sleep-scheduler", "sleep_scheduler", SleepSchedulerService, s) as srv,
            grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}") as ch,
        ):
            job = sleep_pb2_grpc.SleepSchedulerStub(ch).StartConsolidation(
                sleep_pb2.StartConsolidationRequest(wait=True, trigger="test"),
                metadata=[("authorization", f"Bearer {KEY}")],
                timeout=60,
            )
        assert job.state == sleep_pb2.JOB_STATE_FAILED
        assert recorder.address in job.error
        assert_keyed(recorder, "/tori.episodic.v1.EpisodicVault/")

    def test_the_pruner_reads_the_graph_at_the_scheduler_address(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The pruner's scheduler client dials services.sleep_scheduler.address with its key."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        env = fleet_env(tmp_path, recorder)
        env.pop("PRUNER_ADDRESS")
        s = settings_for(env, sparse_pruner={"trigger_on_consolidation": False})
        with (
            ServerThread("sparse-pruner", "sparse_pruner", SparsePrunerService, s) as srv,
            grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}") as ch,
        ):
            job = pruner_pb2_grpc.SparsePrunerStub(ch).TriggerPruning(
                pruner_pb2.TriggerPruningRequest(dry_run=True),
                metadata=[("authorization", f"Bearer {KEY}")],
                timeout=60,
            )
        assert job.state != pruner_pb2.JOB_STATE_SUCCEEDED
        assert_keyed(recorder, "/tori.sleep.v1.SleepScheduler/")

    def test_the_learner_follows_the_vault_at_its_address(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The learner's vault follower dials services.episodic_vault.address with its key."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        env = fleet_env(tmp_path, recorder)
        env.pop("KOOPMAN_ADDRESS")
        s = settings_for(env, koopman_learner={"follow_vault": True, "poll_interval_s": 0.2})
        with ServerThread("koopman-learner", "koopman_learner", KoopmanLearnerService, s):
            deadline = asyncio.run(_wait_for(lambda: bool(recorder.keyed("/tori.episodic"))))
        assert deadline, f"the learner never called the vault; saw {recorder.methods()}"
        assert_keyed(recorder, "/tori.episodic.v1.EpisodicVault/")

    def test_the_gateway_calls_each_service_at_its_address(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The gateway's primary route is each service's dial address, called with its key."""
        monkeypatch.delenv("TORI_API_KEY", raising=False)
        s = settings_for(fleet_env(tmp_path, recorder))
        targets = primary_targets(s.services)
        assert {targets.of(k) for k in SERVICE_ENV} == {recorder.address}

        async def go() -> None:
            clients = ServiceClients(
                gateway_metrics.GatewayMetrics(CollectorRegistry()), ClientFactory.of(s)
            )
            spec = CallSpec("koopman_learner", "GetKclStats", 5.0, "kcl_s", idempotent=True)
            try:
                with pytest.raises(Exception, match="koopman"):
                    await clients.call(
                        spec,
                        koopman_pb2.GetKclStatsRequest(),
                        route="primary",
                        targets=targets,
                        cfg=s.gateway,
                    )
            finally:
                await clients.close()

        asyncio.run(go())
        assert_keyed(recorder, "/tori.koopman.v1.KoopmanLearner/GetKclStats")


class TestEveryCommandLineClient:
    """The CLIs read the same configuration a service does and send the fleet's key."""

    @pytest.fixture
    def env(
        self, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> dict[str, str]:
        env = fleet_env(tmp_path, recorder)
        for k in list(os.environ):
            if k.startswith(("TORI_", "VAULT_", "SLEEP_", "PRUNER_", "KOOPMAN_")):
                monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return env

    def test_vault_cli(self, env: dict[str, str], recorder: Recorder) -> None:
        """vault-cli stats calls the vault's dial address with the key file's key."""
        assert vault_cli.main(["stats"]) == 1
        assert_keyed(recorder, "/tori.episodic.v1.EpisodicVault/GetStats")

    def test_trigger(self, env: dict[str, str], recorder: Recorder) -> None:
        """The consolidation trigger calls the scheduler's dial address with the key."""
        assert trigger.main(["--once", "--timeout", "10"]) == 3
        assert_keyed(recorder, "/tori.sleep.v1.SleepScheduler/StartConsolidation")

    def test_prune(self, env: dict[str, str], recorder: Recorder) -> None:
        """prune --once calls the pruner's dial address with the key."""
        assert prune.main(["--once", "--timeout", "10"]) == prune.EXIT_USAGE
        assert_keyed(recorder, "/tori.pruner.v1.SparsePruner/TriggerPruning")

    def test_an_explicit_key_wins(self, env: dict[str, str], recorder: Recorder) -> None:
        """--api-key is sent instead of the key file's key."""
        vault_cli.main(["--api-key", "mine", "stats"])
        (call,) = recorder.keyed("/tori.episodic.v1.EpisodicVault/GetStats")
        assert call.metadata["authorization"] == "Bearer mine"

    def test_loadgen(self, env: dict[str, str], recorder: Recorder, tmp_path: Path) -> None:
        """The load generator's puts go to the vault's dial address with the key."""
        code = loadgen_cli.main(
            ["--rate", "20", "--duration", "1", "--no-verify", "--mix", "put=1", "--seed", "1"]
        )
        assert code == 1
        assert_keyed(recorder, "/tori.episodic.v1.EpisodicVault/PutEpisode")


async def _wait_for(cond: Any, within: float = 15.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return bool(cond())
