"""What every tool call goes through: the caller, its route, the service call, the metrics.

GatewayMCP is the SDK's MCPServer with one hook, call_tool, that for every call:
  1. finds the caller (HTTP: set by the API-key middleware; stdio: gateway.stdio_api_key),
  2. picks its route (routing.route_for) from the configuration in force,
  3. refuses arguments the tool does not take, and rewrites the SDK's argument-validation text
     into one line per problem that names the argument,
  4. counts and times the call by tool, outcome and route.
Tools read the call's state from CALL (a context variable set for the duration of the call).
"""

from __future__ import annotations

import contextvars
import json
import time
from dataclasses import dataclass
from typing import Any

import grpc
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult
from pydantic import ValidationError

from mcp_services.common.clients import ClientFactory
from mcp_services.common.config_schema import Settings
from mcp_services.gateway import metrics as m
from mcp_services.gateway.backends import CallSpec, ServiceClients, ServiceError
from mcp_services.gateway.convert import ArgumentError
from mcp_services.gateway.keys import ANONYMOUS, Caller
from mcp_services.gateway.live import LiveConfig, Snapshot
from mcp_services.gateway.routing import Route, route_for

CALLER_SCOPE_KEY = "tori.caller"


class GatewayToolError(ToolError):
    """A tool failure with the outcome label it is counted under, and the service's status code
    when a service refused (so a tool can say what that refusal means in its own terms)."""

    def __init__(self, text: str, outcome: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(text)
        self.outcome = outcome
        self.code = code


@dataclass(frozen=True)
class CallState:
    caller: Caller
    route: Route
    snap: Snapshot


CALL: contextvars.ContextVar[CallState] = contextvars.ContextVar("tori_gateway_call")


class Gateway:
    """The live configuration, the service clients and the metrics one gateway process shares."""

    def __init__(self, settings: Settings, live: LiveConfig, metrics: m.GatewayMetrics) -> None:
        self.settings = settings
        self.live = live
        self.metrics = metrics
        self.clients: ServiceClients | None = None
        self.stdio_key = settings.gateway.stdio_api_key

    def open(self) -> None:
        """Create the clients; call on the event loop that will make the calls."""
        self.clients = ServiceClients(self.metrics, ClientFactory.of(self.settings))
        self.live.on_change.append(lambda snap: self._retain(snap))

    def _retain(self, snap: Snapshot) -> None:
        if self.clients is not None:
            self.clients.retain(list(snap.targets.values()))

    async def close(self) -> None:
        if self.clients is not None:
            await self.clients.close()

    async def call(self, spec: CallSpec, request: Any, stream: list[Any] | None = None) -> Any:
        """Call a service on the current caller's route; a failure becomes a tool error."""
        state = CALL.get()
        assert self.clients is not None, "open() first"
        try:
            return await self.clients.call(
                spec,
                request,
                route=state.route,
                targets=state.snap.targets[state.route],
                cfg=state.snap.cfg,
                # From the caller's key, never from the tool's arguments.
                namespace=state.caller.namespace,
                stream=stream,
            )
        except ServiceError as exc:
            raise GatewayToolError(str(exc), exc.outcome, exc.code) from None

    def stdio_caller(self, snap: Snapshot) -> Caller:
        if snap.keys.empty and not snap.cfg.auth_required:
            return ANONYMOUS
        caller, reason = snap.keys.lookup(self.stdio_key or None)
        if caller is None:
            raise GatewayToolError(
                f"unauthorized: {reason} (stdio sessions use the key in GATEWAY_API_KEY). "
                "Nothing was done",
                m.UNAUTHORIZED,
            )
        return caller


def _arg_path(loc: tuple[int | str, ...]) -> str:
    # pydantic puts the union member tried ("dict[str,float]", "str") into the path: drop it.
    parts = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def validation_text(exc: ValidationError) -> str:
    """One line per argument: its path, what is wrong (every union member's reason), the value."""
    problems: dict[str, list[str]] = {}
    shown: dict[str, str] = {}
    for err in exc.errors():
        path = _arg_path(tuple(err["loc"])) or "(arguments)"
        msg = str(err["msg"])
        if msg not in problems.setdefault(path, []):
            problems[path].append(msg)
        given = err.get("input")
        if err["type"] != "missing" and not isinstance(given, dict | list):
            shown[path] = f" (got {json.dumps(given, default=str)[:80]})"
    return "; ".join(
        f"argument `{path}`: {' or '.join(msgs)}{shown.get(path, '')}"
        for path, msgs in problems.items()
    )


class GatewayMCP(MCPServer):
    """MCPServer whose call_tool adds the caller, routing, argument checks and metrics."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gateway = gateway

    def _caller(self, context: Context[Any, Any] | None, snap: Snapshot) -> Caller:
        request = None
        if context is not None:
            try:
                request = context.request_context.request
            except (ValueError, AttributeError):  # no request context (direct in-process calls)
                request = None
        scope = getattr(request, "scope", None)
        if scope is not None:
            caller = scope.get(CALLER_SCOPE_KEY)
            if not isinstance(caller, Caller):  # the middleware always sets it; never trust less
                raise GatewayToolError(
                    "unauthorized: the request carried no checked API key", m.UNAUTHORIZED
                )
            return caller
        return self.gateway.stdio_caller(snap)

    def _check_names(self, name: str, arguments: dict[str, Any]) -> None:
        tool = self._tool_manager.get_tool(name)
        if tool is None:
            return  # the SDK reports the unknown tool
        known = set(tool.parameters.get("properties", {}))
        unknown = sorted(set(arguments) - known)
        if unknown:
            raise ArgumentError(
                unknown[0],
                f"{name} takes no such argument; its arguments are {', '.join(sorted(known))}",
            )

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> Any:
        gw = self.gateway
        snap = gw.live.current
        route: Route = "primary"
        outcome = m.OK
        start = time.monotonic()
        try:
            caller = self._caller(context, snap)
            route = route_for(caller.identity, snap.cfg.canary_percent)
            token = CALL.set(CallState(caller, route, snap))
            try:
                self._check_names(name, arguments)
                result = await super().call_tool(name, arguments, context)
            finally:
                CALL.reset(token)
            if isinstance(result, CallToolResult) and result.is_error:
                outcome = m.SERVICE_ERROR
            return result
        except ArgumentError as exc:
            outcome = m.INVALID_ARGUMENT
            raise ToolError(
                f"{name}: invalid {exc}. Nothing was done; fix it and call again"
            ) from None
        except GatewayToolError as exc:
            outcome = exc.outcome
            raise ToolError(f"{name}: {exc}") from None
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError):
                outcome = m.INVALID_ARGUMENT
                raise ToolError(
                    f"{name}: invalid {validation_text(cause)}. Nothing was done; fix the "
                    "arguments (the tool's input schema describes each) and call again"
                ) from None
            if isinstance(cause, ArgumentError):
                outcome = m.INVALID_ARGUMENT
                raise ToolError(
                    f"{name}: invalid {cause}. Nothing was done; fix it and call again"
                ) from None
            if isinstance(cause, GatewayToolError):
                outcome = cause.outcome
                raise ToolError(f"{name}: {cause}") from None
            outcome = m.SERVICE_ERROR
            raise
        except Exception:
            outcome = m.SERVICE_ERROR
            raise
        finally:
            gw.metrics.tool_calls.labels(name, outcome, route).inc()
            gw.metrics.tool_seconds.labels(name, route).observe(time.monotonic() - start)
