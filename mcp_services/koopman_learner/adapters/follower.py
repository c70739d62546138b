"""Following the vault: a persisted Scan cursor, with episode.stored events as the trigger.

The loop asks the vault for its last seq (GetStats) and scans everything after the learner's
cursor, `scan_batch` episodes at a time; each chunk is learnt (off the event loop) and the state
with the new cursor saved before the next chunk is read. It then waits for an `episode.stored`
event or `poll_interval_s`, whichever comes first, so a lost event only delays learning. While
the vault is unreachable it backs off (up to the poll interval) and reports `connected` false.
The loop is a Periodic (common/periodic.py) in the service's task group.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc
import structlog
from google.protobuf.message import Message

from mcp_services.common.event_bus import EPISODE_STORED, EventBus
from mcp_services.common.namespaces import DEFAULT, namespace_metadata
from mcp_services.common.periodic import Periodic
from mcp_services.common.tasks import Spawner
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.events.v1 import events_pb2

log = structlog.get_logger(__name__)

# Deadline of each vault call; a scan chunk of scan_batch episodes must fit in it.
CALL_TIMEOUT_S = 30.0

Learn = Callable[[Sequence[episodic_pb2.Episode]], Awaitable[None]]


class VaultFollower:
    def __init__(
        self,
        target: str,
        *,
        cursor: Callable[[], int],
        learn: Learn,
        skip_to: Callable[[int], Awaitable[None]],
        bus: EventBus,
        poll_interval_s: float,
        scan_batch: int,
        connect: Callable[[str], grpc.aio.Channel],
        tasks: Spawner,
        on_lag: Callable[[int], None] = lambda lag: None,
        namespace: str = DEFAULT,
    ) -> None:
        self._target = target
        # Every call reads this namespace's episodes only.
        self._md = namespace_metadata(namespace)
        self._cursor = cursor
        self._learn = learn
        self._skip_to = skip_to
        self._bus = bus
        self._poll = poll_interval_s
        self._batch = scan_batch
        # The fleet's client factory in the service: the channel sends the learner's key.
        self._connect = connect
        self._on_lag = on_lag
        self._tasks = tasks
        # After a good catch-up the next look is a poll interval away; after a failure, the
        # backoff (0.1 s doubling up to the poll interval).
        self._wait = poll_interval_s
        self._backoff = 0.1
        self._loop = Periodic("kcl-vault-follower", self._follow, lambda: self._wait)
        self._stub: episodic_pb2_grpc.EpisodicVaultStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self.connected = False
        self.vault_last_seq = 0
        self.last_error = ""

    def start(self) -> None:
        self._channel = self._connect(self._target)
        self._stub = episodic_pb2_grpc.EpisodicVaultStub(self._channel)
        self._bus.subscribe([EPISODE_STORED], self._on_event)
        self._loop.wake()  # catch up at once
        self._loop.start(self._tasks)

    def wake(self) -> None:
        """Look at the vault now (e.g. after a reset that rewound the cursor)."""
        self._loop.wake()

    async def _on_event(self, channel: str, event: Message) -> None:
        if isinstance(event, events_pb2.EpisodeStored) and event.seq > self._cursor():
            self._loop.wake()

    async def _follow(self) -> None:
        assert self._stub is not None
        try:
            await self._catch_up(self._stub)
        except grpc.aio.AioRpcError as exc:
            if self.connected or not self.last_error:
                log.warning("kcl_vault_unavailable", target=self._target, error=exc.details())
            self.connected = False
            self.last_error = f"vault {self._target}: {exc.code().name}: {exc.details()}"
            self._wait, self._backoff = self._backoff, min(self._backoff * 2, self._poll)
        else:
            self._wait, self._backoff = self._poll, 0.1

    async def _catch_up(self, stub: episodic_pb2_grpc.EpisodicVaultStub) -> None:
        stats = await stub.GetStats(
            episodic_pb2.GetStatsRequest(), timeout=CALL_TIMEOUT_S, metadata=self._md
        )
        self.connected = True
        self.last_error = ""
        self.vault_last_seq = stats.last_seq
        while self._cursor() < self.vault_last_seq:
            chunk: list[episodic_pb2.Episode] = []
            call = stub.Scan(
                episodic_pb2.ScanRequest(after_seq=self._cursor(), limit=self._batch),
                timeout=CALL_TIMEOUT_S,
                metadata=self._md,
            )
            async for response in call:
                chunk.append(response.episode)
            if not chunk:
                # Episodes up to last_seq were purged or deleted: nothing is left to learn there.
                await self._skip_to(self.vault_last_seq)
                break
            await self._learn(chunk)
            self.vault_last_seq = max(self.vault_last_seq, chunk[-1].seq)
            self._on_lag(max(self.vault_last_seq - self._cursor(), 0))
        self._on_lag(max(self.vault_last_seq - self._cursor(), 0))

    async def stop(self) -> None:
        await self._loop.stop()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
