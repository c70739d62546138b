"""Typed events over Redis pub/sub.

A trigger, never the source of truth: publishing never blocks a caller and never fails it. Events
wait in a bounded queue while Redis is away (the oldest are dropped and counted when it fills),
and a background task reconnects with exponential backoff. Subscribers resubscribe the same way;
a consumer that missed events catches up by pulling from the owning service.

Channels map one-to-one to message types in proto/tori/events/v1/events.proto.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
import structlog
from google.protobuf.message import DecodeError, Message
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError
from ulid import ULID

from mcp_services.common import metric_names as names
from mcp_services.common.config_schema import RedisConfig
from mcp_services.common.timestamps import timestamp_now
from mcp_services.gen.tori.events.v1 import events_pb2

EPISODE_STORED: Final = "tori.memory.episode.stored"
CONSOLIDATION_COMPLETED: Final = "tori.memory.consolidation.completed"
GRAPH_PRUNED: Final = "tori.memory.graph.pruned"
KCL_MODES_UPDATED: Final = "tori.memory.kcl.modes.updated"
KCL_COUPLINGS_UPDATED: Final = "tori.memory.kcl.couplings.updated"

CHANNEL_TYPES: Final[dict[str, type[Message]]] = {
    EPISODE_STORED: events_pb2.EpisodeStored,
    CONSOLIDATION_COMPLETED: events_pb2.ConsolidationCompleted,
    GRAPH_PRUNED: events_pb2.GraphPruned,
    KCL_MODES_UPDATED: events_pb2.ModesUpdated,
    KCL_COUPLINGS_UPDATED: events_pb2.CouplingsUpdated,
}

Handler = Callable[[str, Message], Awaitable[None]]
log = structlog.get_logger(__name__)


def new_header(source_service: str) -> events_pb2.EventHeader:
    return events_pb2.EventHeader(
        event_id=str(ULID()), emitted_at=timestamp_now(), source_service=source_service
    )


def decode_event(channel: str, data: bytes) -> Message:
    """Parse an event published on `channel`; ValueError for an unknown channel or bad bytes."""
    cls = CHANNEL_TYPES.get(channel)
    if cls is None:
        raise ValueError(f"channel {channel!r} carries no known event type")
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"event on {channel} does not parse as {cls.__name__}: {exc}") from exc
    return msg


class _Backoff:
    def __init__(self, maximum: float) -> None:
        self.delay, self.maximum = 0.1, maximum

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.delay = 0.1


class EventBus:
    """Publishes and subscribes to typed events. Disabled (publishes go nowhere) without a URL."""

    def __init__(self, cfg: RedisConfig, service: str, registry: CollectorRegistry) -> None:
        self._cfg = cfg
        self._service = service
        self._queue: deque[tuple[str, bytes]] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: aioredis.Redis | None = None
        self._published = Counter(
            names.EVENTS_PUBLISHED, "Events published to Redis.", ["channel"], registry=registry
        )
        self._dropped = Counter(
            names.EVENTS_DROPPED,
            "Events dropped: the queue overflowed while Redis was away, or shutdown.",
            ["channel", "reason"],
            registry=registry,
        )
        self._connected = Gauge(
            names.EVENT_BUS_CONNECTED,
            "1 while the publisher's last Redis call succeeded.",
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        return bool(self._cfg.url)

    def _new_client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self._cfg.url,
            password=self._cfg.password or None,
            socket_connect_timeout=self._cfg.connect_timeout_s,
            socket_timeout=max(self._cfg.connect_timeout_s, 1.0),
            health_check_interval=10,
        )

    async def start(self) -> None:
        if not self.enabled:
            log.warning("event_bus_disabled", reason="redis.url is empty; events are not published")
            return
        self._client = self._new_client()
        self._tasks.append(asyncio.create_task(self._publisher(), name="event-bus-publisher"))

    def publish(self, channel: str, message: Message) -> None:
        """Queue `message` for `channel`; never blocks and never raises for Redis trouble."""
        if CHANNEL_TYPES.get(channel) is not type(message):
            raise TypeError(f"{type(message).__name__} does not belong on channel {channel}")
        if not self.enabled:
            return
        if len(self._queue) >= self._cfg.publish_queue:
            dropped_channel, _ = self._queue.popleft()
            self._dropped.labels(dropped_channel, "queue_full").inc()
        self._queue.append((channel, message.SerializeToString()))
        self._wakeup.set()

    async def _publisher(self) -> None:
        assert self._client is not None
        backoff = _Backoff(self._cfg.reconnect_backoff_max_s)
        down_since: float | None = None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            channel, data = self._queue[0]
            try:
                await self._client.publish(channel, data)
            except (RedisError, OSError) as exc:
                self._connected.set(0)
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("event_bus_unavailable", error=str(exc), queued=len(self._queue))
                await asyncio.sleep(backoff.next())
                continue
            self._queue.popleft()
            self._published.labels(channel).inc()
            self._connected.set(1)
            if down_since is not None:
                log.info("event_bus_reconnected", after_s=round(time.monotonic() - down_since, 2))
                down_since = None
            backoff.reset()

    def subscribe(self, channels: Sequence[str], handler: Handler) -> None:
        """Call `handler(channel, event)` for every event on `channels`; resubscribes after outages.

        Events published while the subscriber was disconnected are not replayed: pull to catch up.
        """
        unknown = [c for c in channels if c not in CHANNEL_TYPES]
        if unknown:
            raise ValueError(f"channels: unknown {unknown}; use the names in {list(CHANNEL_TYPES)}")
        if not self.enabled:
            log.warning("event_bus_subscribe_disabled", channels=list(channels))
            return
        self._tasks.append(
            asyncio.create_task(self._subscriber(list(channels), handler), name="event-bus-sub")
        )

    async def _subscriber(self, channels: list[str], handler: Handler) -> None:
        backoff = _Backoff(self._cfg.reconnect_backoff_max_s)
        while True:
            client = self._new_client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*channels)
                backoff.reset()
                while True:
                    msg: dict[str, Any] | None = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    channel = msg["channel"].decode()
                    try:
                        event = decode_event(channel, msg["data"])
                    except ValueError as exc:
                        log.warning("event_undecodable", channel=channel, error=str(exc))
                        continue
                    try:
                        await handler(channel, event)
                    except Exception:
                        log.exception("event_handler_failed", channel=channel)
            except (RedisError, OSError) as exc:
                log.warning("event_subscriber_disconnected", error=str(exc))
                await asyncio.sleep(backoff.next())
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    async def close(self, flush_timeout_s: float = 1.0) -> None:
        """Flush queued events for up to `flush_timeout_s`, then stop the background tasks."""
        deadline = time.monotonic() + flush_timeout_s
        # Polling for at most flush_timeout_s is simpler than a drained-event the publisher would
        # have to keep in step with its queue.
        while self._queue and self._tasks and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for channel, _ in self._queue:
            self._dropped.labels(channel, "shutdown").inc()
        self._queue.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
            self._client = None
