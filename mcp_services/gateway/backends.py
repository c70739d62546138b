"""The gateway's gRPC clients of the four services, with deadlines, retries and readable errors.

Every call has a deadline (gateway.deadlines, per tool) that covers all its attempts. Only calls
that are idempotent are retried, and only on UNAVAILABLE (the request did not take effect, or
taking it again changes nothing): reads, and puts, whose episode ids the gateway fixes before the
first attempt so a repeat is recognised by the vault as the same episode.

A failure becomes a ServiceError whose text tells a model what went wrong and what to do, and
names the service (and its address and route) when the service is down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from mcp_services.common.clients import ClientFactory
from mcp_services.common.namespaces import DEFAULT, namespace_metadata
from mcp_services.gateway import metrics as m
from mcp_services.gateway.routing import Route, Targets
from mcp_services.gateway.settings import GatewayConfig
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc
from mcp_services.gen.tori.koopman.v1 import koopman_pb2_grpc
from mcp_services.gen.tori.pruner.v1 import pruner_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2_grpc

SERVICE_NAMES = {
    "episodic_vault": "episodic-vault",
    "sleep_scheduler": "sleep-scheduler",
    "sparse_pruner": "sparse-pruner",
    "koopman_learner": "koopman-learner",
}
_STUBS: dict[str, Callable[[grpc.aio.Channel], Any]] = {
    "episodic_vault": episodic_pb2_grpc.EpisodicVaultStub,
    "sleep_scheduler": sleep_pb2_grpc.SleepSchedulerStub,
    "sparse_pruner": pruner_pb2_grpc.SparsePrunerStub,
    "koopman_learner": koopman_pb2_grpc.KoopmanLearnerStub,
}
# Codes that mean the caller's request was at fault.
_CALLER_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# A channel no route uses any more gets this long for its calls in flight before it closes.
RETIRE_GRACE_S = 5.0

log = structlog.get_logger(__name__)


class ServiceError(Exception):
    """A service call failed; str() is the text for the model, `outcome` the metrics label."""

    def __init__(self, text: str, outcome: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(text)
        self.outcome = outcome
        self.code = code


@dataclass(frozen=True)
class CallSpec:
    service: str  # a key of SERVICE_NAMES
    method: str
    deadline_s: float
    deadline_key: str  # the config key, named in the timeout message
    idempotent: bool


def describe_failure(
    exc: grpc.aio.AioRpcError, spec: CallSpec, target: str, route: Route
) -> ServiceError:
    code = exc.code()
    details = (exc.details() or "").strip() or code.name
    name = SERVICE_NAMES[spec.service]
    where = f"{name} at {target} ({route} route)"
    if code in _CALLER_CODES:
        fix = {
            grpc.StatusCode.ALREADY_EXISTS: "use another id, or omit it to get a new one",
            grpc.StatusCode.RESOURCE_EXHAUSTED: "send less per call, or ask the operator to "
            "raise the limit",
            grpc.StatusCode.FAILED_PRECONDITION: "do what the message asks first, then call again",
            grpc.StatusCode.NOT_FOUND: "check the id or version",
        }.get(code, "fix that argument and call again")
        return ServiceError(
            f"{name} refused the request: {details}; {fix}", m.INVALID_ARGUMENT, code
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServiceError(
            f"{where} is unavailable ({details}): the service is down or restarting. Retry in a "
            "few seconds; if it persists, tell the operator that it is down",
            m.UNAVAILABLE,
            code,
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServiceError(
            f"{where} did not answer within {spec.deadline_s:g} s (gateway.deadlines."
            f"{spec.deadline_key}). Retry later, or with a smaller request; if it persists, tell "
            "the operator",
            m.UNAVAILABLE,
            code,
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return ServiceError(
            f"{where} does not offer {spec.method}: it runs a version without this feature. This "
            "tool cannot be used until the operator upgrades it",
            m.SERVICE_ERROR,
            code,
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return ServiceError(
            f"{where} refused the gateway's own credentials ({details}). Nothing you can change "
            "fixes this: tell the operator to give the gateway a key the services accept "
            "(auth.api_keys)",
            m.SERVICE_ERROR,
            code,
        )
    return ServiceError(
        f"{where} failed with {code.name} ({details}). Retry once; if it fails again, tell the "
        "operator",
        m.SERVICE_ERROR,
        code,
    )


class ServiceClients:
    """One grpc.aio channel per address, shared by both routes when they share an address.

    Create and use it on one event loop; close() releases every channel.
    """

    def __init__(self, metrics: m.GatewayMetrics, clients: ClientFactory) -> None:
        self._metrics = metrics
        self._clients = clients
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Channels closing after retain(): kept so close() can wait for them.
        self._retiring: set[asyncio.Task[None]] = set()

    def _channel(self, target: str) -> grpc.aio.Channel:
        ch = self._channels.get(target)
        if ch is None:
            # The factory's channel sends the gateway's service key; retries stay here (retries
            # off in the channel), where they are counted per service and route.
            ch = self._clients.aio_channel(target=target, retries=False)
            self._channels[target] = ch
        return ch

    def retain(self, targets: Sequence[Targets]) -> None:
        """Forget channels to addresses no route uses any more (after a reload)."""
        live = {t.of(k) for t in targets for k in SERVICE_NAMES}
        for target in [t for t in self._channels if t not in live]:
            ch = self._channels.pop(target)
            # retain() runs in a reload hook, which cannot await: the close is a task, kept.
            task = asyncio.get_running_loop().create_task(
                ch.close(grace=RETIRE_GRACE_S), name=f"retire-channel-{target}"
            )
            self._retiring.add(task)
            task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("gateway_channel_close_failed", task=task.get_name(), error=str(exc))

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        if self._retiring:
            # Each ends within its grace; the margin covers the close itself.
            await asyncio.wait(set(self._retiring), timeout=RETIRE_GRACE_S + 1.0)

    async def call(
        self,
        spec: CallSpec,
        request: Any,
        *,
        route: Route,
        targets: Targets,
        cfg: GatewayConfig,
        stream: Sequence[Any] | None = None,
        namespace: str = DEFAULT,
    ) -> Any:
        """Call spec.method with `request` (or, for client streaming, the messages `stream`)
        for `namespace` (sent as the x-tori-namespace metadata)."""
        metadata = namespace_metadata(namespace)
        target = targets.of(spec.service)
        stub = _STUBS[spec.service](self._channel(target))
        fn = getattr(stub, spec.method)
        labels = (spec.service, spec.method, route)
        start = time.monotonic()
        deadline = start + spec.deadline_s
        attempts = cfg.max_attempts if spec.idempotent else 1
        attempt = 0
        try:
            while True:
                attempt += 1
                remaining = deadline - time.monotonic()
                try:
                    arg = iter(stream) if stream is not None else request
                    result = await fn(arg, timeout=max(remaining, 0.001), metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    self._metrics.backend_calls.labels(*labels, exc.code().name).inc()
                    backoff = cfg.retry_backoff_s * 2 ** (attempt - 1)
                    if (
                        exc.code() == grpc.StatusCode.UNAVAILABLE
                        and attempt < attempts
                        and deadline - time.monotonic() > backoff
                    ):
                        self._metrics.retries.labels(*labels).inc()
                        await asyncio.sleep(backoff)
                        continue
                    raise describe_failure(exc, spec, target, route) from None
                self._metrics.backend_calls.labels(*labels, "OK").inc()
                return result
        finally:
            self._metrics.backend_seconds.labels(*labels).observe(time.monotonic() - start)
