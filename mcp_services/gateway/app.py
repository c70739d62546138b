"""Serving the gateway: streamable HTTP (stateless, JSON responses) or stdio, plus metrics.

HTTP: every request to gateway.path must carry `Authorization: Bearer <key>` (or `X-API-Key`);
a missing, unknown or revoked key gets 401 before the MCP layer sees the request, so a refused
call does nothing. GET /healthz answers without a key, for orchestrators and `make up`.
stdio: the session acts with gateway.stdio_api_key (GATEWAY_API_KEY), checked on every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvicorn
from prometheus_client import CollectorRegistry, start_http_server
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_services.common.auth import AuthConfigError
from mcp_services.common.clients import caller_key
from mcp_services.common.config import ConfigError, load_config
from mcp_services.common.config_schema import Settings
from mcp_services.common.logging import configure_logging
from mcp_services.common.tasks import ServiceTasks
from mcp_services.gateway.core import CALLER_SCOPE_KEY, Gateway, GatewayMCP
from mcp_services.gateway.http_guard import with_head_timeout
from mcp_services.gateway.keys import ANONYMOUS
from mcp_services.gateway.live import LiveConfig
from mcp_services.gateway.metrics import GatewayMetrics
from mcp_services.gateway.tools import AVAILABLE, register_tools

log = structlog.get_logger(__name__)

INSTRUCTIONS = """\
TORI Memory: long-term memory for an agent. Store moments as episodes with memory.put (content \
plus the concepts active, with strengths 0..1), read them back with memory.get, find them by \
similarity (memory.search) or by concept cue (memory.recall). memory.sleep consolidates episodes \
into a concept graph; memory.prune keeps that graph sparse; memory.kcl_status shows the learned \
dynamics; memory.stats shows what is stored. Errors say what to change."""


# JSON-RPC server-defined error code for a refused API key (the HTTP status is 401).
UNAUTHORIZED_CODE = -32001


class StartupError(Exception):
    """The gateway cannot start; the message says why and what to do."""


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return None


def presented_key(scope: Scope) -> str | None:
    auth = _header(scope, b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return _header(scope, b"x-api-key")


class ApiKeyMiddleware:
    """401 for a request to the MCP path without a valid key; else it records the caller."""

    def __init__(self, app: ASGIApp, gateway: Gateway, path: str) -> None:
        self.app = app
        self.gw = gateway
        self.path = path.rstrip("/") or "/"

    async def _send_json(
        self, send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]
    ) -> None:
        data = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers + extra})
        await send({"type": "http.response.body", "body": data})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/healthz":
            snap = self.gw.live.current
            await self._send_json(
                send, 200, {"status": "ok", "canaryPercent": snap.cfg.canary_percent}, []
            )
            return
        if path.rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        snap = self.gw.live.current
        if snap.keys.empty and not snap.cfg.auth_required:
            scope[CALLER_SCOPE_KEY] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        caller, reason = snap.keys.lookup(presented_key(scope))
        if caller is None:
            why = (
                "missing"
                if reason.startswith("no API key")
                else "revoked"
                if "revoked" in reason
                else "invalid"
            )
            self.gw.metrics.auth_refused.labels(why).inc()
            await self._send_json(
                send,
                401,
                # A JSON-RPC error body: the SDK's client shows its message to the caller.
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": UNAUTHORIZED_CODE, "message": f"unauthorized: {reason}"},
                },
                [(b"www-authenticate", b'Bearer realm="tori-memory", error="invalid_token"')],
            )
            return
        scope[CALLER_SCOPE_KEY] = caller
        await self.app(scope, receive, send)


def build(settings: Settings, registry: CollectorRegistry) -> tuple[Gateway, GatewayMCP, list[str]]:
    metrics = GatewayMetrics(registry)
    try:
        live = LiveConfig(settings, metrics)
    except ConfigError as exc:
        raise StartupError(str(exc)) from exc
    try:
        service_key = caller_key(settings)
    except AuthConfigError as exc:
        raise StartupError(str(exc)) from exc
    if live.current.cfg.auth_required and service_key is None:
        # The gateway locks its door while the services behind it may stand open.
        log.error(
            "services_without_keys",
            problem="gateway.auth_required is true but no service key is configured "
            "(auth.api_keys / TORI_API_KEYS_FILE): the services accept every call without a key",
            fix="give the services and the gateway TORI_API_KEYS_FILE (`make secrets-up` writes "
            "secrets/api_keys; `make up` makes one under its var dir)",
        )
    gw = Gateway(settings, live, metrics)
    server = GatewayMCP(
        gw,
        name="tori-memory",
        title="TORI Memory",
        instructions=INSTRUCTIONS,
        version="0.1.0",
        log_level="WARNING",
    )
    names = register_tools(server, gw, settings.gateway.tool_names)
    missing = sorted(
        t
        for t in ("put", "get", "search", "recall", "sleep", "prune", "kcl_status", "stats")
        if not AVAILABLE.get(t)
    )
    log.info("gateway_tools", tools=names, not_offered=missing)
    return gw, server, names


@dataclass
class Running:
    http_port: int = 0
    metrics_port: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    gateway: Gateway | None = None


async def serve_http(
    settings: Settings, *, stop: asyncio.Event | None = None, running: Running | None = None
) -> None:
    """Serve MCP over streamable HTTP until `stop` is set (or SIGTERM/SIGINT in the main thread)."""
    g = settings.gateway
    running = running or Running()
    stop = stop or asyncio.Event()
    registry = CollectorRegistry()
    gw, server, _ = build(settings, registry)
    try:
        httpd, _thread = start_http_server(g.metrics_port, g.metrics_host, registry)
    except OSError as exc:
        raise StartupError(
            f"mcp-gateway: metrics port {g.metrics_port} on {g.metrics_host} is not available "
            f"({exc.strerror}); stop what holds it or set GATEWAY_METRICS_PORT"
        ) from exc
    running.metrics_port = int(httpd.server_address[1])
    gw.open()
    # Owns the gateway's background tasks (the config watch), as the runner does a service's.
    tasks = ServiceTasks("mcp-gateway")
    await tasks.open()
    gw.live.start(tasks)
    app = ApiKeyMiddleware(
        server.streamable_http_app(
            streamable_http_path=g.path, stateless_http=True, json_response=True, host=g.host
        ),
        gw,
        g.path,
    )
    config = uvicorn.Config(
        app,
        host=g.host,
        port=g.port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        # Slow or idle clients cannot hold connections (http_guard.py): a request head must
        # arrive within header_timeout_s, an idle keep-alive connection closes after
        # keep_alive_timeout_s, and beyond max_connections new requests get 503.
        http=with_head_timeout(g.header_timeout_s),
        timeout_keep_alive=g.keep_alive_timeout_s,
        limit_concurrency=g.max_connections or None,
    )
    userver = uvicorn.Server(config)
    # uvicorn handles SIGTERM/SIGINT in the main thread: serve() returns, and `finally` cleans up.
    loop = asyncio.get_running_loop()
    task = loop.create_task(userver.serve())
    try:
        while not userver.started:
            if task.done():
                await task  # raises what stopped it
                raise StartupError(
                    f"mcp-gateway: HTTP port {g.port} on {g.host} is not available; stop what "
                    "holds it or set GATEWAY_PORT"
                )
            await asyncio.sleep(0.02)
        running.http_port = int(userver.servers[0].sockets[0].getsockname()[1])
        running.gateway = gw
        log.info(
            "serving",
            mcp=f"http://{g.host}:{running.http_port}{g.path}",
            metrics=f"{g.metrics_host}:{running.metrics_port}",
            canary_percent=gw.live.current.cfg.canary_percent,
            auth="off" if gw.live.current.keys.empty else "on",
        )
        running.ready.set()
        stop_wait = loop.create_task(stop.wait())
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
    finally:
        userver.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, timeout=settings.grpc.shutdown_grace_s + 5)
        await gw.live.stop()
        await tasks.close(settings.grpc.shutdown_grace_s)
        await gw.close()
        httpd.shutdown()
        httpd.server_close()
        log.info("stopped")


async def serve_stdio(settings: Settings) -> None:
    """Serve MCP over this process's stdin/stdout until the client closes it."""
    registry = CollectorRegistry()
    gw, server, _ = build(settings, registry)
    gw.open()
    tasks = ServiceTasks("mcp-gateway")
    await tasks.open()
    gw.live.start(tasks)
    try:
        await server.run_stdio_async()
    finally:
        await gw.live.stop()
        await tasks.close(settings.grpc.shutdown_grace_s)
        await gw.close()


def main(stdio: bool) -> int:
    name = "mcp-gateway"
    try:
        settings = load_config()
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging, name)
    try:
        asyncio.run(serve_stdio(settings) if stdio else serve_http(settings))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


class GatewayThread:
    """The HTTP gateway on its own event loop in a thread: for tests and benchmarks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running = Running()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="mcp-gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}{self.settings.gateway.path}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.running.metrics_port}/metrics"

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve_http(self.settings, stop=self._stop, running=self.running)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self.running.ready.set()

    def start(self, timeout: float = 30.0) -> GatewayThread:
        self._thread.start()
        if not self.running.ready.wait(timeout):
            raise TimeoutError(f"the gateway did not become ready within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def reload(self) -> bool:
        """Reload the live configuration now, on the gateway's loop (as SIGHUP does)."""
        assert self._loop is not None and self.running.gateway is not None
        live = self.running.gateway.live
        return bool(asyncio.run_coroutine_threadsafe(_call(live.reload), self._loop).result(10))

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _call(fn: Any) -> Any:
    return fn()
