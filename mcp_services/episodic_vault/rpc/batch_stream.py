"""Receiving a PutEpisodes stream within its bounds: each episode validated, charged to the
stream's byte budget and appended to the batch's spool as it arrives.

Memory held per open stream is one request, whatever the batch's length or whether the client ever
half-closes; the byte budget (vault.limits.max_stream_bytes) bounds the spool on disk and the
cap on concurrent streams (vault.limits.max_concurrent_streams) bounds how many there are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor

from mcp_services.common.stream_limits import StreamBudget
from mcp_services.episodic_vault.domain.spool import EpisodeSpool
from mcp_services.episodic_vault.rpc.validation import InvalidEpisode, validate_episode
from mcp_services.episodic_vault.settings import VaultConfig
from mcp_services.gen.tori.episodic.v1 import episodic_pb2


async def receive_batch(
    requests: AsyncIterator[episodic_pb2.PutEpisodeRequest],
    cfg: VaultConfig,
    now_ms: int,
    budget: StreamBudget,
    spool: EpisodeSpool,
    executor: Executor,
) -> None:
    """Take the whole stream into `spool`.

    Raises:
        InvalidEpisode: naming the first bad episode, or the batch when over max_batch.
        StreamRefused: when the stream sends more than its byte budget.
        DiskFull: when the spool's device is full.
    """
    limit = cfg.limits.max_batch
    loop = asyncio.get_running_loop()
    i = 0
    async for request in requests:
        budget.charge(request.ByteSize())
        if i >= limit:
            raise InvalidEpisode(
                "episodes",
                f"more than {limit} in one batch (vault.limits.max_batch); split the stream",
            )
        if not request.HasField("episode"):
            raise InvalidEpisode(f"episodes[{i}]", "is missing; set the episode")
        ep = validate_episode(request.episode, cfg, now_ms, f"episodes[{i}]")
        del request  # the proto and its payload can go before the next one arrives
        await loop.run_in_executor(executor, spool.append, ep)
        i += 1
