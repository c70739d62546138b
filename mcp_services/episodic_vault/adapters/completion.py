"""The Recall seam to the SleepScheduler: complete a concept cue through the consolidated graph.

Recall first asks the scheduler's Complete (deadline vault.recall.completion_timeout_ms): the
fleet's own scheduler unless vault.recall.scheduler_address names another or is "off"
(:func:`completion_address`). The effective cue is the settled attractor's concepts with
their strengths, plus the cue's concepts the graph does not know (it cannot speak for them); cue
concepts the settling switched off are dropped. When the scheduler does not answer in time or
fails, Recall ranks by the cue as given and says why in its response. The request carries the
recalling namespace (x-tori-namespace), so a cue is completed only through that namespace's graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc

from mcp_services.common.clients import dial_address
from mcp_services.common.config_schema import Settings
from mcp_services.common.namespaces import current_namespace, namespace_metadata
from mcp_services.episodic_vault.domain.completion import Completed, CompletionStatus
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc

OFF = "off"


def completion_address(settings: Settings) -> str:
    """The scheduler Recall completes through: the configured address, the fleet's own, or ""."""
    configured = settings.vault.recall.scheduler_address.strip()
    if configured.lower() == OFF:
        return ""
    return configured or dial_address(settings, "sleep_scheduler")


class CueCompleter:
    """The gRPC :class:`~mcp_services.episodic_vault.domain.completion.CueCompletion`.

    Owns one aio channel to the scheduler, opened on first use in the serving event loop.

    ``connect`` makes that channel for an address: the fleet's client factory, which sends the
    vault's service key.
    """

    def __init__(
        self,
        address: str,
        timeout_ms: int,
        connect: Callable[[str], grpc.aio.Channel],
    ) -> None:
        self.address = address
        self._timeout_s = timeout_ms / 1000
        self._connect = connect
        self._channel: grpc.aio.Channel | None = None
        self._stub: sleep_pb2_grpc.SleepSchedulerStub | None = None

    def warm(self) -> None:
        """Open the channel and start connecting now (call on the serving event loop), so the
        first Recall does not spend its short deadline on name resolution and the handshake.
        A scheduler that is not up yet is retried in the background by the channel."""
        if self.address and self._stub is None:
            self._channel = self._connect(self.address)
            self._stub = sleep_pb2_grpc.SleepSchedulerStub(self._channel)
            self._channel.get_state(try_to_connect=True)

    async def complete(self, cue: Mapping[str, float], wanted: bool) -> Completed:
        given = dict(cue)
        if not wanted:
            return Completed(
                CompletionStatus.DISABLED, given, "the request asked for no completion"
            )
        if not self.address:
            return Completed(
                CompletionStatus.DISABLED,
                given,
                "completion is off (vault.recall.scheduler_address: off)",
            )
        self.warm()
        assert self._stub is not None
        req = sleep_pb2.CompleteRequest(concept_ids=list(given), strengths=list(given.values()))
        try:
            # Through the graph of the recalling namespace only: completion never mixes them.
            resp = await self._stub.Complete(
                req, timeout=self._timeout_s, metadata=namespace_metadata(current_namespace())
            )
        except grpc.aio.AioRpcError as exc:
            why = (
                f"the scheduler at {self.address} did not answer within "
                f"{self._timeout_s * 1000:.0f} ms"
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                else f"the scheduler at {self.address} failed: {exc.code().name}: {exc.details()}"
            )
            return Completed(
                CompletionStatus.UNAVAILABLE, given, why + "; ranked by the cue as given"
            )
        if resp.moved_away:
            # The settled state is farther from every stored prototype than the cue: expanding
            # the cue with it would rank by a worse memory than the one asked for.
            return Completed(
                CompletionStatus.UNAVAILABLE,
                given,
                f"graph version {resp.version} completed the cue away from every stored "
                f"prototype (overlap {resp.cue_overlap:.2f} -> {resp.overlap:.2f}); ranked by "
                "the cue as given",
                int(resp.version),
            )
        effective = {c: float(s) for c, s in zip(resp.concept_ids, resp.strengths, strict=True)}
        for c in resp.unknown:
            if c in given:
                effective.setdefault(c, given[c])
        if not effective:
            return Completed(
                CompletionStatus.UNAVAILABLE,
                given,
                f"graph version {resp.version} settled to no active concept; ranked by the cue "
                "as given",
                int(resp.version),
            )
        return Completed(CompletionStatus.APPLIED, effective, "", int(resp.version))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
