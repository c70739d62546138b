"""Prometheus metrics for a grpc.aio server, with the standard names.

grpc_server_started_total, grpc_server_handled_total{grpc_code} and grpc_server_handling_seconds,
labelled by grpc_type, grpc_service and grpc_method. Calls that end in context.abort(), raise, or
are cancelled are counted with their real code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from mcp_services.common import metric_names as names
from mcp_services.common.handlers import call_type, wrap_handler

# Sub-millisecond to tens of seconds: puts sit near 1 ms, consolidation cycles near seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class GrpcServerMetrics:
    """The three standard server metrics, registered on the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = names.GRPC_LABELS
        self.started = Counter(
            names.GRPC_SERVER_STARTED, "RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            names.GRPC_SERVER_HANDLED,
            "RPCs completed on the server, whatever their status.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            names.GRPC_SERVER_HANDLING_SECONDS,
            "Time to complete an RPC on the server.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


def _split_method(full_method: str) -> tuple[str, str]:
    # "/tori.episodic.v1.EpisodicVault/PutEpisode" -> (service, method)
    _, service, method = full_method.split("/", 2) if full_method.count("/") >= 2 else ("", "", "")
    return service or "unknown", method or "unknown"


def status_name(context: grpc.aio.ServicerContext) -> str | None:
    """The status the servicer set (by abort or set_code), or None when it set none."""
    code: Any = context.code()
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for status in grpc.StatusCode:  # grpc.aio reports the raw integer
        if status.value[0] == code:
            return str(status.name)
    return "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every RPC. Put it first so it also sees calls later interceptors refuse."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._m = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split_method(handler_call_details.method)
        labels = (call_type(handler), service, method)
        m = self._m

        async def around(
            context: grpc.aio.ServicerContext, run: Callable[[], Awaitable[Any]]
        ) -> Any:
            m.started.labels(*labels).inc()
            start = time.perf_counter()
            code = "OK"
            try:
                result = await run()
                code = status_name(context) or "OK"
                return result
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                # context.abort() raises after setting the code; anything else is UNKNOWN to grpc.
                code = status_name(context) or "UNKNOWN"
                raise
            finally:
                m.handled.labels(*labels, code).inc()
                m.handling_seconds.labels(*labels).observe(time.perf_counter() - start)

        return wrap_handler(handler, around)
