"""The Redis event bus against real Redis servers: typed events, outages, reconnects."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from mcp_services.common.config_schema import RedisConfig
from mcp_services.common.event_bus import (
    CONSOLIDATION_COMPLETED,
    EPISODE_STORED,
    EventBus,
    decode_event,
    new_header,
)
from mcp_services.fleet.redis_server import redis_argv, wait_ready
from mcp_services.gen.tori.events.v1 import events_pb2
from tests.conftest import free_port


def stored(i: int) -> events_pb2.EpisodeStored:
    return events_pb2.EpisodeStored(header=new_header("test"), episode_id=f"e{i}", seq=i)


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def subscribed(url: str, within: float = 10.0) -> bool:
    """True once a subscriber to tori.memory.episode.stored is registered on the server."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            try:
                if (await client.pubsub_numsub(EPISODE_STORED))[0][1] >= 1:
                    return True
            except redis.RedisError:
                pass  # the server is still coming back
            await asyncio.sleep(0.02)
        return False
    finally:
        await client.aclose()


class TestTypedEvents:
    def test_publish_and_subscribe_round_trip(self, redis_url: str) -> None:
        """An event published on its channel reaches a subscriber as the same typed message."""

        first = stored(1)

        async def main() -> list[tuple[str, Message]]:
            bus = EventBus(RedisConfig(url=redis_url), "test", CollectorRegistry())
            got: list[tuple[str, Message]] = []

            async def handler(channel: str, event: Message) -> None:
                got.append((channel, event))

            bus.subscribe([EPISODE_STORED, CONSOLIDATION_COMPLETED], handler)
            await bus.start()
            assert await subscribed(redis_url)
            bus.publish(EPISODE_STORED, first)
            bus.publish(CONSOLIDATION_COMPLETED, events_pb2.ConsolidationCompleted(graph_version=7))
            await wait_for(lambda: len(got) == 2)
            await bus.close()
            return got

        got = asyncio.run(main())
        assert got[0] == (EPISODE_STORED, first)
        assert isinstance(got[1][1], events_pb2.ConsolidationCompleted)
        assert got[1][1].graph_version == 7

    def test_wrong_type_for_channel_is_refused(self) -> None:
        """Publishing a message type that does not belong on the channel is a TypeError."""
        bus = EventBus(RedisConfig(url=""), "test", CollectorRegistry())
        with pytest.raises(TypeError, match="does not belong on channel"):
            bus.publish(CONSOLIDATION_COMPLETED, stored(1))

    def test_undecodable_bytes_and_unknown_channels_are_errors(self) -> None:
        """decode_event rejects channels it does not know and bytes that do not parse."""
        with pytest.raises(ValueError, match="no known event type"):
            decode_event("tori.memory.nope", b"")
        with pytest.raises(ValueError, match="does not parse"):
            decode_event(EPISODE_STORED, b"\xff\xff\xff")


class TestOutages:
    def test_events_queued_while_redis_is_down_are_delivered_after_it_returns(
        self, tmp_path: Path
    ) -> None:
        """Publishing never raises while Redis is away; the queue is flushed once it is back,
        and the subscriber resubscribes by itself."""
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"

        def start_redis() -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(redis_argv(port, tmp_path), stdout=subprocess.DEVNULL)
            assert wait_ready(url, 15)
            return proc

        async def main() -> tuple[float, list[str]]:
            registry = CollectorRegistry()
            cfg = RedisConfig(url=url, reconnect_backoff_max_s=0.3, connect_timeout_s=0.3)
            bus = EventBus(cfg, "test", registry)
            got: list[str] = []

            async def handler(channel: str, event: Message) -> None:
                got.append(event.episode_id)  # type: ignore[attr-defined]

            server = start_redis()
            bus.subscribe([EPISODE_STORED], handler)
            await bus.start()
            assert await subscribed(url)  # pub/sub delivers only to subscribers already there
            bus.publish(EPISODE_STORED, stored(0))
            assert await wait_for(lambda: registry.get_sample_value(
                "tori_events_published_total", {"channel": EPISODE_STORED}) == 1)  # fmt: skip
            server.terminate()
            server.wait(10)
            for i in range(1, 4):  # Redis is gone: these must queue, not raise
                bus.publish(EPISODE_STORED, stored(i))
            assert await wait_for(
                lambda: registry.get_sample_value("tori_event_bus_connected") == 0
            )
            server = start_redis()
            assert await wait_for(lambda: registry.get_sample_value(
                "tori_events_published_total", {"channel": EPISODE_STORED}) == 4, 20)  # fmt: skip
            # The subscriber is back too: a fresh event reaches it.
            assert await subscribed(url)
            bus.publish(EPISODE_STORED, stored(99))
            await wait_for(lambda: "e99" in got)
            connected = registry.get_sample_value("tori_event_bus_connected") or 0.0
            await bus.close()
            server.terminate()
            server.wait(10)
            return connected, got

        connected, got = asyncio.run(main())
        assert connected == 1
        assert got[0] == "e0" and got[-1] == "e99"

    def test_full_queue_drops_oldest_and_counts_them(self) -> None:
        """Past redis.publish_queue waiting events the oldest are dropped and counted."""

        async def main() -> float:
            registry = CollectorRegistry()
            dead = f"redis://127.0.0.1:{free_port()}/0"
            bus = EventBus(
                RedisConfig(url=dead, publish_queue=3, connect_timeout_s=0.1), "t", registry
            )
            await bus.start()
            for i in range(5):
                bus.publish(EPISODE_STORED, stored(i))
            dropped = registry.get_sample_value(
                "tori_events_dropped_total", {"channel": EPISODE_STORED, "reason": "queue_full"}
            )
            await bus.close(flush_timeout_s=0)
            return dropped or 0.0

        assert asyncio.run(main()) == 2
