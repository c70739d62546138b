"""The gateway's Prometheus metrics (served on gateway.metrics_port, 9095 by default).

Labels stay low-cardinality: the tool, the outcome, the route (primary / canary), the service and
its gRPC method and code; never a caller, key, tenant or episode id. Per-route series let a
dashboard put the canary's error rate and latency beside the primary's.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TOOL_CALLS = "gateway_tool_calls_total"
TOOL_SECONDS = "gateway_tool_seconds"
BACKEND_CALLS = "gateway_backend_calls_total"
BACKEND_SECONDS = "gateway_backend_seconds"
BACKEND_RETRIES = "gateway_backend_retries_total"
AUTH_REFUSED = "gateway_auth_refused_total"
CANARY_PERCENT = "gateway_canary_percent"
RELOADS = "gateway_config_reloads_total"
KEYS_LOADED = "gateway_api_keys"

# Outcomes of a tool call.
OK = "ok"
INVALID_ARGUMENT = "invalid_argument"
UNAUTHORIZED = "unauthorized"
SERVICE_ERROR = "service_error"
UNAVAILABLE = "unavailable"
OUTCOMES = (OK, INVALID_ARGUMENT, UNAUTHORIZED, SERVICE_ERROR, UNAVAILABLE)

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0, 300.0,
)  # fmt: skip


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.tool_calls = Counter(
            TOOL_CALLS.removesuffix("_total"),
            "MCP tool calls by tool, outcome and route.",
            ["tool", "outcome", "route"],
            registry=registry,
        )
        self.tool_seconds = Histogram(
            TOOL_SECONDS,
            "Time to answer an MCP tool call, by tool and route.",
            ["tool", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_calls = Counter(
            BACKEND_CALLS.removesuffix("_total"),
            "Calls from the gateway to the services, by service, method, route and gRPC code.",
            ["service", "method", "route", "code"],
            registry=registry,
        )
        self.backend_seconds = Histogram(
            BACKEND_SECONDS,
            "Time of the gateway's calls to the services (all attempts), by service and route.",
            ["service", "method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            BACKEND_RETRIES.removesuffix("_total"),
            "Retried attempts of idempotent service calls.",
            ["service", "method", "route"],
            registry=registry,
        )
        self.auth_refused = Counter(
            AUTH_REFUSED.removesuffix("_total"),
            "Requests refused for their API key: missing, invalid or revoked.",
            ["reason"],
            registry=registry,
        )
        self.canary_percent = Gauge(
            CANARY_PERCENT, "Share of callers routed to the canary, percent.", registry=registry
        )
        self.reloads = Counter(
            RELOADS.removesuffix("_total"),
            "Reloads of the key file and runtime file: applied, or refused (kept the old).",
            ["outcome"],
            registry=registry,
        )
        self.keys_loaded = Gauge(
            KEYS_LOADED, "API keys accepted (revoked ones excluded).", registry=registry
        )
        for reason in ("missing", "invalid", "revoked"):
            self.auth_refused.labels(reason)
        for outcome in ("applied", "refused"):
            self.reloads.labels(outcome)
