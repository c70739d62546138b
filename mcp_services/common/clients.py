"""One way for a service, a CLI, the loadgen or the gateway to call a service of the fleet.

:class:`ClientFactory` is built from the settings and hands out gRPC channels by the callee's
name. Every channel it makes:

- dials the callee's **dial address** (:func:`dial_address`): ``services.<name>.address`` when set
  (compose service names in the container configuration), else its listen ``host:port`` with a
  wildcard host (``0.0.0.0``, ``::``, empty) read as loopback — the one place that rule lives;
- sends the caller's **service key** on every call (``authorization: Bearer <key>``) unless the
  call sets its own: an explicit key (``--api-key``, ``TORI_API_KEY``), else the first admin key
  of the fleet's key list (``auth.api_keys`` / ``auth.api_keys_file``, the file every service of a
  compose deployment mounts at /run/secrets/api_keys; the first key when none is admin), else the
  one the local fleet made (:func:`fleet_keys_file`), else none (auth off);
- gives unary calls that set no deadline a **default deadline** (``default_timeout_s``); streams
  keep the deadline their caller gives, since a catch-up Scan may rightly run for minutes, and
  every stream the fleet opens gives one (the scheduler's Scan: sleep_scheduler.
  vault_scan_timeout_s; the learner's Scan: per chunk; the pruner's ReadGraph and CommitGraph:
  sparse_pruner.scheduler_timeout_s);
- **retries only idempotent calls** (reads, dry runs, marking consolidated) on UNAVAILABLE, up to
  3 attempts with exponential backoff from 50 ms, through gRPC's own retry policy; a write is
  never sent twice by the channel. A caller that counts its own retries (the gateway) turns them
  off with ``retries=False``;
- keeps the connection alive (``grpc.keepalive_time_ms``), reconnects quickly after a restart,
  and carries the fleet's message size limit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from mcp_services.common.auth import load_service_keys, own_key
from mcp_services.common.config import resolve_path
from mcp_services.common.config_schema import AuthConfig, Endpoint, Settings

# Config key -> compose service name; either spelling names a service here.
SERVICES: dict[str, str] = {
    "episodic_vault": "episodic-vault",
    "sleep_scheduler": "sleep-scheduler",
    "sparse_pruner": "sparse-pruner",
    "koopman_learner": "koopman-learner",
}
_BY_COMPOSE_NAME = {v: k for k, v in SERVICES.items()}
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")

# Calls safe to send again after UNAVAILABLE: they read, or repeat to the same end state.
IDEMPOTENT: dict[str, tuple[str, ...]] = {
    "tori.episodic.v1.EpisodicVault": (
        "GetEpisode", "ListRecent", "Scan", "GetStats", "Search", "Recall", "MarkConsolidated",
    ),
    "tori.sleep.v1.SleepScheduler": (
        "GetConfig", "ReadGraph", "ListGraphVersions", "GetGraphStats", "Complete",
        "GetConsolidationStatus", "GetReplayStats",
    ),
    "tori.pruner.v1.SparsePruner": (
        "GetConfig", "GetPruningStatus", "GetPruningStats", "GetEdgeUsage", "PreviewPruning",
        "ListBackups",
    ),
    "tori.koopman.v1.KoopmanLearner": (
        "GetConfig", "GetProcessingStatus", "GetSpectralModes", "PredictActivations",
        "GetStabilityAnalysis", "GetKclStats",
    ),
}  # fmt: skip
RETRY_ATTEMPTS = 3
RETRY_INITIAL_BACKOFF_S = 0.05
DEFAULT_TIMEOUT_S = 30.0


class UnknownService(ValueError):
    """A name that is not one of the fleet's services."""


def service_key(name: str) -> str:
    """The config key of a service, given either spelling (episodic-vault, episodic_vault)."""
    if name in SERVICES:
        return name
    if name in _BY_COMPOSE_NAME:
        return _BY_COMPOSE_NAME[name]
    raise UnknownService(
        f"{name!r} is not a service of the fleet; use one of {', '.join(SERVICES.values())}"
    )


def reachable_host(host: str) -> str:
    """Where a client on the same host reaches a server that listens on ``host``."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


def endpoint_address(ep: Endpoint) -> str:
    """host:port that callers dial for the service at endpoint ``ep``."""
    return ep.address or f"{reachable_host(ep.host)}:{ep.port}"


def dial_address(settings: Settings, name: str) -> str:
    """host:port that callers dial for service ``name``."""
    return endpoint_address(getattr(settings.services, service_key(name)))


def metrics_address(settings: Settings, name: str) -> str:
    """host:port of service ``name``'s metrics page, for a scraper on the same host."""
    ep: Endpoint = getattr(settings.services, service_key(name))
    return f"{reachable_host(ep.metrics_host)}:{ep.metrics_port}"


def fleet_keys_file(settings: Settings) -> Path:
    """The service key file the local fleet creates (0600) when no key is configured."""
    return resolve_path(settings.paths.var_dir) / "secrets" / "api_keys"


def caller_key(settings: Settings, explicit: str | None = None) -> str | None:
    """The key a caller sends: ``explicit``, else TORI_API_KEY, else the fleet's own key.

    The fleet's own key is the first admin key of the configured keys, else of the file the
    local fleet made under its var dir, so a CLI next to `make up` needs no key typed.

    Raises:
        AuthConfigError: a key file cannot be read or holds a malformed line.
    """
    if explicit:
        return explicit
    env = os.environ.get("TORI_API_KEY", "").strip()
    if env:
        return env
    keys = load_service_keys(settings.auth)
    if not keys and fleet_keys_file(settings).is_file():
        keys = load_service_keys(AuthConfig(api_keys_file=str(fleet_keys_file(settings))))
    return own_key(keys)


def _has_key(metadata: Iterable[tuple[str, Any]] | None) -> bool:
    return any(k in ("authorization", "x-api-key") for k, _ in metadata or ())


def retry_service_config(services: Sequence[str] | None = None) -> str:
    """gRPC service config JSON retrying IDEMPOTENT methods on UNAVAILABLE."""
    names = [
        {"service": svc, "method": m}
        for svc, methods in IDEMPOTENT.items()
        if services is None or svc in services
        for m in methods
    ]
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": names,
                    "retryPolicy": {
                        "maxAttempts": RETRY_ATTEMPTS,
                        "initialBackoff": f"{RETRY_INITIAL_BACKOFF_S}s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


# --- interceptors: the key and the default deadline ---------------------------------------------


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SyncDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    pass


class _SyncInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, key: str | None, default_timeout_s: float | None) -> None:
        self._key = key
        self._timeout = default_timeout_s

    def _details(self, d: Any, unary: bool) -> _SyncDetails:
        md = list(d.metadata or ())
        if self._key and not _has_key(md):
            md.append(("authorization", f"Bearer {self._key}"))
        timeout = d.timeout if d.timeout is not None or not unary else self._timeout
        return _SyncDetails(
            d.method,
            timeout,
            md,
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], d: Any, request: Any) -> Any:
        return continuation(self._details(d, True), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], d: Any, request: Any) -> Any:
        return continuation(self._details(d, False), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], d: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(d, False), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], d: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._details(d, False), request_iterator)


def _aio_details(d: Any, key: str | None, timeout: float | None) -> grpc.aio.ClientCallDetails:
    md = grpc.aio.Metadata(*(d.metadata or ()))
    if key and not _has_key(md):
        md.add("authorization", f"Bearer {key}")
    return grpc.aio.ClientCallDetails(
        d.method,
        d.timeout if d.timeout is not None else timeout,
        md,
        d.credentials,
        d.wait_for_ready,
    )


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str | None, default_timeout_s: float | None) -> None:
        self._key = key
        self._timeout = default_timeout_s

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], d: Any, request: Any
    ) -> Any:
        return await continuation(_aio_details(d, self._key, self._timeout), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str | None) -> None:
        self._key = key

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], d: Any, request: Any
    ) -> Any:
        return await continuation(_aio_details(d, self._key, None), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str | None) -> None:
        self._key = key

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], d: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_aio_details(d, self._key, None), request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str | None) -> None:
        self._key = key

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], d: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_aio_details(d, self._key, None), request_iterator)


# --- the factory ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientFactory:
    """Channels to the fleet's services for one caller.

    Args:
        settings: the fleet's configuration (addresses, keys, message limits, keepalive).
        api_key: the caller's key when given explicitly (a CLI's --api-key); see :func:`caller_key`.
        default_timeout_s: the deadline of a unary call that sets none.
    """

    settings: Settings
    api_key: str | None = None
    default_timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def of(cls, settings: Settings, api_key: str | None = None) -> ClientFactory:
        return cls(settings, caller_key(settings, api_key))

    @property
    def key(self) -> str | None:
        return self.api_key

    def address(self, name: str) -> str:
        return dial_address(self.settings, name)

    def options(self, retries: bool = True) -> list[tuple[str, Any]]:
        limit = self.settings.grpc.max_message_bytes
        opts: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", self.settings.grpc.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.settings.grpc.keepalive_timeout_ms),
            # Reconnect quickly after a service restarts rather than backing off for 20 s+.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if retries:
            opts += [("grpc.enable_retries", 1), ("grpc.service_config", retry_service_config())]
        else:
            opts.append(("grpc.enable_retries", 0))
        return opts

    def aio_channel(
        self, name: str | None = None, *, target: str | None = None, retries: bool = True
    ) -> grpc.aio.Channel:
        """An asyncio channel to service ``name`` (or to ``target``, an explicit host:port)."""
        where = target or self.address(_need(name))
        return grpc.aio.insecure_channel(
            where,
            options=self.options(retries),
            interceptors=[
                _AioUnaryUnary(self.api_key, self.default_timeout_s),
                _AioUnaryStream(self.api_key),
                _AioStreamUnary(self.api_key),
                _AioStreamStream(self.api_key),
            ],
        )

    def channel(
        self, name: str | None = None, *, target: str | None = None, retries: bool = True
    ) -> grpc.Channel:
        """A blocking channel to service ``name`` (or ``target``); close it when done."""
        where = target or self.address(_need(name))
        raw = grpc.insecure_channel(where, options=self.options(retries))
        return grpc.intercept_channel(raw, _SyncInterceptor(self.api_key, self.default_timeout_s))


def _need(name: str | None) -> str:
    if name is None:
        raise UnknownService("give the service's name or an explicit target host:port")
    return name
