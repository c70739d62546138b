"""The server runner every service uses: one place for what a well-kept gRPC service needs.

serve() starts, in order: the Prometheus metrics endpoint, the event bus, the service's own
resources, and a grpc.aio server with the metrics and auth interceptors, the standard health
service and reflection. It reports SERVING once everything is up and, on SIGTERM/SIGINT (or the
`stop` event), reports NOT_SERVING, refuses new calls, lets in-flight calls finish for
grpc.shutdown_grace_s, then closes the service's resources.

Each service gets a task group (``Context.tasks``, tasks.py) that owns its background tasks:
they are started with ``ctx.tasks.spawn(...)``, never as unowned tasks. At shutdown, after the
service's ``stop()``, the tasks still running are cancelled and awaited for at most
grpc.shutdown_grace_s; any still running then are logged by name (``background_tasks_stuck``).

A port that is taken is an error naming the port (SO_REUSEPORT is off, so a second server never
silently shares a port with the first).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from wsgiref.simple_server import WSGIServer, make_server

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Info, disable_created_metrics, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from mcp_services.common import metric_names as names
from mcp_services.common.auth import ApiKeyInterceptor, AuthConfigError, load_service_keys
from mcp_services.common.config import ConfigError, config_files, load_config
from mcp_services.common.config_schema import Endpoint, GrpcConfig, Settings
from mcp_services.common.decode_guard import DecodeGuardInterceptor
from mcp_services.common.event_bus import EventBus
from mcp_services.common.grpc_metrics import GrpcServerMetrics, MetricsInterceptor
from mcp_services.common.logging import configure_logging
from mcp_services.common.reload import ConfigReloader, sections_of
from mcp_services.common.tasks import ServiceTasks

log = structlog.get_logger(__name__)

# The *_created series double every counter's size and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Service(Protocol):
    """What a service gives the runner: its servicers and the resources they need."""

    @property
    def service_names(self) -> Sequence[str]:
        """Full proto service names, for health and reflection."""
        ...

    def register(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Context:
    """What the runner hands a service factory."""

    settings: Settings
    registry: CollectorRegistry
    bus: EventBus
    # Owns the service's background tasks: spawn through it (cancelled and awaited at shutdown).
    tasks: ServiceTasks


ServiceFactory = Callable[[Context], Service]


class StartupError(Exception):
    """The service could not start; the message says why and what to do (e.g. a port is taken)."""


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a wildcard, an interface's name or address: beyond loopback


def server_options(cfg: GrpcConfig) -> list[tuple[str, int]]:
    options = [
        # Off: a second process binding the same port must fail, not share the traffic.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.keepalive_time_ms", cfg.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", cfg.keepalive_timeout_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Off unless configured: with BDP probing the HTTP/2 window of a stream grows with the
        # measured bandwidth-delay product, and on a loaded host four never-closed 1 MB-message
        # streams made the vault buffer ~500 MB (tests/episodic_vault/test_stream_bounds.py).
        ("grpc.http2.bdp_probe", int(cfg.http2_bdp_probe)),
    ]
    if cfg.max_connection_age_ms:
        options += [
            ("grpc.max_connection_age_ms", cfg.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", cfg.max_connection_age_grace_ms),
        ]
    return options


@dataclass
class Running:
    """Ports actually bound (they differ from the config when it asked for port 0)."""

    grpc_port: int = 0
    metrics_port: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    reloader: ConfigReloader | None = None


def _start_metrics(ep: Endpoint, registry: CollectorRegistry, name: str) -> tuple[WSGIServer, int]:
    try:
        httpd = make_server(
            ep.metrics_host,
            ep.metrics_port,
            make_wsgi_app(registry),
            ThreadingWSGIServer,
            handler_class=_SilentHandler,
        )
    except OSError as exc:
        raise StartupError(
            f"{name}: metrics port {ep.metrics_port} on {ep.metrics_host} is not available "
            f"({exc.strerror}); stop what holds it or set another metrics_port"
        ) from exc
    # A short poll interval so shutdown() returns promptly (the library default waits 0.5 s).
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="metrics-http", daemon=True
    ).start()
    return httpd, int(httpd.server_address[1])


async def serve(
    name: str,
    endpoint_key: str,
    factory: ServiceFactory,
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    running: Running | None = None,
    reload: tuple[Callable[[], Settings], Sequence[Path]] | None = None,
) -> None:
    """Run one service until `stop` is set or the process gets SIGTERM/SIGINT.

    ``reload``: how to re-read the configuration and the files to watch; with it the keys the
    service declares live follow file changes and SIGHUP (see reload.py).
    """
    ep: Endpoint = getattr(settings.services, endpoint_key)
    running = running or Running()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    registry = CollectorRegistry()
    Info(names.SERVICE_INFO.removesuffix("_info"), "The running service.", registry=registry).info(
        {"service": name, "environment": settings.environment}
    )
    httpd, running.metrics_port = _start_metrics(ep, registry, name)
    bus = EventBus(settings.redis, name, registry)
    tasks = ServiceTasks(name)
    service: Service | None = None
    server: grpc.aio.Server | None = None
    try:
        interceptors: list[grpc.aio.ServerInterceptor] = [
            MetricsInterceptor(GrpcServerMetrics(registry))
        ]
        try:
            keys = load_service_keys(settings.auth)
        except AuthConfigError as exc:
            raise StartupError(str(exc)) from exc
        if not keys and not is_loopback(ep.host):
            raise StartupError(
                f"{name}: services.{endpoint_key}.host is {ep.host!r}, beyond loopback, and no "
                "service key is configured, so anyone who reaches it could call every RPC; set "
                "TORI_API_KEYS_FILE to a key file (`make secrets-up` writes one) or listen on "
                "127.0.0.1"
            )
        if keys:
            interceptors.append(ApiKeyInterceptor(keys))
        # Innermost: corrupt request bytes become INVALID_ARGUMENT, counted and after auth.
        interceptors.append(DecodeGuardInterceptor())
        server = grpc.aio.server(
            interceptors=interceptors,
            options=server_options(settings.grpc),
            maximum_concurrent_rpcs=settings.grpc.max_concurrent_rpcs or None,
        )
        address = f"{ep.host}:{ep.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(
                f"{name}: gRPC port {ep.port} on {ep.host} is not available ({exc}); stop what "
                "holds it or set another port"
            ) from exc
        if bound == 0:
            raise StartupError(f"{name}: gRPC port {ep.port} on {ep.host} is not available")
        running.grpc_port = bound

        await bus.start()
        await tasks.open()
        service = factory(Context(settings, registry, bus, tasks))
        await service.start()
        service.register(server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [*service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        await server.start()
        for svc in ("", *service.service_names):
            await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            grpc=f"{ep.host}:{bound}",
            metrics=f"{ep.metrics_host}:{running.metrics_port}",
            auth="on" if keys else "off",
            events="on" if bus.enabled else "off",
        )
        if reload is not None:
            reloader = ConfigReloader(
                settings,
                reload[0],
                reload[1],
                service,
                registry,
                sections=sections_of(endpoint_key),
            )
            reloader.start(settings.config_reload.poll_interval_s, tasks)
            running.reloader = reloader
        running.ready.set()
        await stop.wait()

        log.info("shutting_down", grace_s=settings.grpc.shutdown_grace_s)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.grpc.shutdown_grace_s)
        server = None
    finally:
        if running.reloader is not None:
            await running.reloader.stop()
        if server is not None:
            await server.stop(0)
        try:
            if service is not None:
                await service.stop()
        finally:
            # What the service's stop() left running (and what it never stopped) ends here.
            await tasks.close(settings.grpc.shutdown_grace_s)
        await bus.close()
        httpd.shutdown()
        httpd.server_close()
        log.info("stopped")


def run(name: str, endpoint_key: str, factory: ServiceFactory) -> int:
    """Process entry point: load config, configure logging, serve; returns the exit code."""
    # Configuration comes from config/ and the environment, not from arguments.
    try:
        settings = load_config()
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging, name)
    try:
        asyncio.run(
            serve(name, endpoint_key, factory, settings, reload=(load_config, config_files()))
        )
    except StartupError as exc:
        log.error("startup_failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    return 0


class ServerThread:
    """Runs a service on its own event loop in a thread: for tests and embedded use.

    with ServerThread(...) as srv: srv.running.grpc_port ...
    """

    def __init__(
        self,
        name: str,
        endpoint_key: str,
        factory: ServiceFactory,
        settings: Settings,
        *,
        reload: tuple[Callable[[], Settings], Sequence[Path]] | None = None,
    ) -> None:
        self._args = (name, endpoint_key, factory, settings)
        self._reload = reload
        self.running = Running()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"server-{name}", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(*self._args, stop=self._stop, running=self.running, reload=self._reload)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the starting thread
            self._error = exc
            self.running.ready.set()

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        if not self.running.ready.wait(timeout):
            raise TimeoutError(f"{self._args[0]} did not become ready within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._error is not None and not isinstance(self._error, StartupError):
            raise self._error

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
