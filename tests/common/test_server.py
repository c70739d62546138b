"""The server runner: ports, graceful shutdown, auth, metrics of refused calls."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcp_services.common.server import Context, ServerThread, StartupError
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sleep_scheduler.server import SleepSchedulerService
from tests.conftest import SettingsFactory, scrape_until, service_environ

SLOW_S = 1.0


class SlowServicer(sleep_pb2_grpc.SleepSchedulerServicer):
    """GetConfig takes SLOW_S seconds: a call that is in flight when shutdown starts."""

    def __init__(self) -> None:
        self.entered = threading.Event()

    async def GetConfig(
        self, request: sleep_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> sleep_pb2.SchedulerConfig:
        self.entered.set()
        await asyncio.sleep(SLOW_S)
        return sleep_pb2.SchedulerConfig(t0=2.0)


class SlowService:
    service_names = ("tori.sleep.v1.SleepScheduler",)

    def __init__(self, ctx: Context) -> None:
        # Only GetConfig is exercised; the other RPCs answer UNIMPLEMENTED from the generated base.
        self.servicer = SlowServicer()  # type: ignore[abstract]
        SlowService.last = self

    def register(self, server: grpc.aio.Server) -> None:
        sleep_pb2_grpc.add_SleepSchedulerServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    last: SlowService


@pytest.fixture
def listening_socket() -> Iterator[int]:
    """A port held by a listening socket, as another program would hold it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield int(s.getsockname()[1])
    s.close()


def run_vault_process(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_services.episodic_vault.server"],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class TestPorts:
    def test_taken_grpc_port_exits_naming_the_port(
        self, tmp_path: object, listening_socket: int
    ) -> None:
        """A service whose gRPC port is taken exits non-zero with a message naming that port."""
        env = service_environ(tmp_path / "var", VAULT_GRPC_PORT=str(listening_socket))  # type: ignore[operator]
        proc = run_vault_process(env)
        assert proc.returncode == 2
        assert f"gRPC port {listening_socket} on 127.0.0.1 is not available" in proc.stderr

    def test_taken_metrics_port_exits_naming_the_port(
        self, tmp_path: object, listening_socket: int
    ) -> None:
        """A service whose metrics port is taken exits non-zero with a message naming that port."""
        env = service_environ(tmp_path / "var", VAULT_METRICS_PORT=str(listening_socket))  # type: ignore[operator]
        proc = run_vault_process(env)
        assert proc.returncode == 2
        assert f"metrics port {listening_socket} on 127.0.0.1 is not available" in proc.stderr

    def test_second_server_on_the_same_port_fails(self, make_settings: SettingsFactory) -> None:
        """SO_REUSEPORT is off: a second in-process server cannot share the first one's port."""
        first = make_settings()
        port = first.services.sleep_scheduler.port
        # Same settings but any free metrics port, so the gRPC bind is what must fail.
        second = first.model_copy(
            update={
                "services": first.services.model_copy(
                    update={
                        "sleep_scheduler": first.services.sleep_scheduler.model_copy(
                            update={"metrics_port": 0}
                        )
                    }
                )
            }
        )
        with (
            ServerThread("a", "sleep_scheduler", SlowService, first),
            pytest.raises(StartupError, match=f"gRPC port {port}"),
        ):
            ServerThread("b", "sleep_scheduler", SlowService, second).start()

    def test_bad_config_exits_naming_the_key(self, tmp_path: object) -> None:
        """A process started with an invalid setting exits 2 naming the key."""
        env = service_environ(tmp_path / "var", VAULT_GRPC_PORT="not-a-port")  # type: ignore[operator]
        proc = run_vault_process(env)
        assert proc.returncode == 2
        assert "services.episodic_vault.port" in proc.stderr


class TestShutdown:
    def test_in_flight_call_finishes_and_new_calls_are_refused(
        self, make_settings: SettingsFactory
    ) -> None:
        """On stop, a call already running completes with OK while the server stops taking new ones."""
        srv = ServerThread("slow", "sleep_scheduler", SlowService, make_settings()).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}")
        stub = sleep_pb2_grpc.SleepSchedulerStub(channel)
        result: dict[str, object] = {}

        def call() -> None:
            try:
                result["resp"] = stub.GetConfig(sleep_pb2.GetConfigRequest(), timeout=10)
            except grpc.RpcError as exc:
                result["err"] = exc.code()

        t = threading.Thread(target=call)
        t.start()
        assert SlowService.last.servicer.entered.wait(5)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        time.sleep(SLOW_S / 4)  # shutdown has begun; the slow call is still running
        fresh = grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}")
        with pytest.raises(grpc.RpcError) as err:
            sleep_pb2_grpc.SleepSchedulerStub(fresh).GetConfig(
                sleep_pb2.GetConfigRequest(), timeout=2
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        t.join(10)
        stopper.join(10)
        assert "err" not in result and result["resp"] == sleep_pb2.SchedulerConfig(t0=2.0)
        channel.close()
        fresh.close()

    def test_sigterm_stops_the_process_cleanly(self, tmp_path: object) -> None:
        """SIGTERM makes a running service report shutdown and exit 0."""
        env = service_environ(tmp_path / "var", LOG_LEVEL="info")  # type: ignore[operator]
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_services.sparse_pruner.server"],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        target = f"127.0.0.1:{env['PRUNER_GRPC_PORT']}"
        from mcp_services.common.health import wait_serving

        assert wait_serving(target, 30, lambda: proc.poll() is None)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "shutting_down" in err and "stopped" in err


class TestAuth:
    def test_api_key_required_except_for_health(self, make_settings: SettingsFactory) -> None:
        """With keys configured, calls without or with a wrong key are UNAUTHENTICATED (and
        counted so), a right key passes, and health needs none."""
        settings = make_settings(auth={"api_keys": ["k-one", "k-two"]})
        with ServerThread("sleep", "sleep_scheduler", SleepSchedulerService, settings) as srv:
            channel = grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}")
            stub = sleep_pb2_grpc.SleepSchedulerStub(channel)
            req = sleep_pb2.GetConfigRequest()
            for md, phrase in (
                ((), "no API key"),
                ((("authorization", "Bearer nope"),), "not valid"),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetConfig(req, metadata=md)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert phrase in (err.value.details() or "")
            assert stub.GetConfig(req, metadata=(("authorization", "Bearer k-two"),)).t0 == 2.0
            assert stub.GetConfig(req, metadata=(("x-api-key", "k-one"),)).t0 == 2.0
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            url = f"http://127.0.0.1:{srv.running.metrics_port}/metrics"
            text = scrape_until(url, 'grpc_code="UNAUTHENTICATED"')
            assert (
                'grpc_server_handled_total{grpc_code="UNAUTHENTICATED",grpc_method="GetConfig"'
                in text
            )
            channel.close()

    def test_key_file_is_read_and_missing_file_refuses_to_start(
        self, make_settings: SettingsFactory, tmp_path: object
    ) -> None:
        """Keys come from auth.api_keys_file (comments skipped); an unreadable file stops start-up."""
        key_file = tmp_path / "keys"  # type: ignore[operator]
        key_file.write_text("# operators\nfile-key\n\n")
        settings = make_settings(auth={"api_keys_file": str(key_file)})
        with ServerThread("sleep", "sleep_scheduler", SleepSchedulerService, settings) as srv:
            channel = grpc.insecure_channel(f"127.0.0.1:{srv.running.grpc_port}")
            stub = sleep_pb2_grpc.SleepSchedulerStub(channel)
            assert stub.GetConfig(
                sleep_pb2.GetConfigRequest(), metadata=(("x-api-key", "file-key"),)
            )
            channel.close()
        bad = make_settings(auth={"api_keys_file": os.fspath(key_file) + ".missing"})
        with pytest.raises(StartupError, match=r"auth\.api_keys_file"):
            ServerThread("sleep", "sleep_scheduler", SleepSchedulerService, bad).start()
