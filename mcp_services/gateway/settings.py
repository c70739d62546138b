"""The gateway's section of the configuration (``gateway``), registered with the loader.

No service process reads it; the gateway re-reads its own files (live.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from mcp_services.common.config_schema import Port, PositiveFloat, StrictModel, register_section


class GatewayRoute(StrictModel):
    """One route's service addresses as host:port; empty means the address under services."""

    episodic_vault: str = ""
    sleep_scheduler: str = ""
    sparse_pruner: str = ""
    koopman_learner: str = ""

    @field_validator("episodic_vault", "sleep_scheduler", "sparse_pruner", "koopman_learner")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if v and (not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535):
            raise ValueError("must be host:port (e.g. 10.0.0.7:50051), or empty for the primary")
        return v


class GatewayDeadlines(StrictModel):
    """Longest wait, in seconds, for the service call behind each tool (retries included)."""

    put_s: PositiveFloat = 5.0
    get_s: PositiveFloat = 5.0
    search_s: PositiveFloat = 10.0
    recall_s: PositiveFloat = 10.0
    # A sleep cycle run with {once: true} waits for the whole consolidation.
    sleep_s: PositiveFloat = 300.0
    prune_s: PositiveFloat = 300.0
    kcl_s: PositiveFloat = 10.0
    stats_s: PositiveFloat = 5.0


class GatewayConfig(StrictModel):
    """The MCP gateway (mcp_services/gateway): transport, API keys, canary routing, deadlines."""

    host: str = "127.0.0.1"
    port: Port = 8765
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/-]*$")] = "/mcp"
    metrics_host: str = "127.0.0.1"
    metrics_port: Port = 9095
    # dotted: memory.put ...; underscore: memory_put ... (clients that reject dots); both.
    tool_names: Literal["dotted", "underscore", "both"] = "dotted"
    # With no key configured: true refuses to start, false lets anonymous callers in (loopback
    # development only). With keys configured every HTTP call needs one.
    auth_required: bool = True
    # Entries "KEY" or "KEY TENANT"; the environment gives them comma-separated.
    api_keys: list[str] = Field(default_factory=list)
    # One entry a line as above; "revoked KEY" refuses a key; blank lines and # comments skipped.
    # Re-read when it changes, so adding or revoking a key needs no restart.
    api_keys_file: str = ""
    # The key a stdio session acts with (it names the caller for routing; checked like HTTP's).
    stdio_api_key: str = ""
    # Share of callers (0-100) sent to the canary route, sticky per tenant or key.
    canary_percent: Annotated[float, Field(ge=0, le=100)] = 0.0
    canary: GatewayRoute = GatewayRoute()
    # A YAML mapping of keys of this section (e.g. "canary_percent: 50") merged over it and
    # re-read when it changes: how routing changes without a restart. Empty: none.
    runtime_file: str = ""
    # How often the key file and runtime file are checked for changes (SIGHUP also reloads).
    reload_interval_s: Annotated[float, Field(gt=0)] = 2.0
    deadlines: GatewayDeadlines = GatewayDeadlines()
    # Attempts for idempotent calls that fail with UNAVAILABLE (1: no retry).
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    retry_backoff_s: Annotated[float, Field(ge=0)] = 0.05
    # Episodes one memory.put call may carry in `episodes`.
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = 1000
    # HTTP: a request's head (request line and headers) must arrive within header_timeout_s of
    # the connection opening or the previous response; an idle keep-alive connection closes
    # after keep_alive_timeout_s; past max_connections open connections (or requests in
    # flight) a request gets 503 (0: no cap).
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    keep_alive_timeout_s: Annotated[int, Field(ge=1, le=600)] = 5
    max_connections: Annotated[int, Field(ge=0)] = 1000

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v


register_section("gateway", GatewayConfig)
