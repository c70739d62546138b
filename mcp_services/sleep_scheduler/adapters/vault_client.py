"""The scheduler's client of the EpisodicVault: unconsolidated episodes in, marks out.

:class:`VaultClient` is the gRPC :class:`~mcp_services.sleep_scheduler.ports.EpisodeSource`.

Only the vault's public gRPC API is used (Scan with only_unconsolidated, MarkConsolidated,
GetStats). Selection filters (age, tags, energy) are applied here as the episodes stream by, so a
cycle takes at most ``max_episodes`` matching episodes, oldest first. Every call has a deadline:
``timeout_s`` for the unary calls, ``scan_timeout_s`` (sleep_scheduler.vault_scan_timeout_s) for
the Scan as a whole.
"""

from __future__ import annotations

import time

import grpc

from mcp_services.common.clients import ClientFactory
from mcp_services.common.namespaces import DEFAULT, namespace_metadata
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.sleep_scheduler.domain import ConceptActivation
from mcp_services.sleep_scheduler.ports import EpisodeBatch, Selection, VaultUnavailable

MARK_BATCH = 10_000
"""The vault takes at most this many ids per MarkConsolidated call."""
SCAN_TIMEOUT_S = 300.0
"""Default deadline of a whole Scan (sleep_scheduler.vault_scan_timeout_s)."""


def activation_of_episode(ep: episodic_pb2.Episode) -> ConceptActivation:
    """One activation per episode: its own, or for a trace the strongest strength per concept."""
    if len(ep.activation.concept_ids):
        pairs = dict(zip(ep.activation.concept_ids, ep.activation.strengths, strict=False))
    else:
        pairs = {}
        for frame in ep.trace:
            for cid, s in zip(
                frame.activation.concept_ids, frame.activation.strengths, strict=False
            ):
                pairs[cid] = max(pairs.get(cid, 0.0), s)
    clipped = {c: min(1.0, max(0.0, float(s))) for c, s in pairs.items()}
    return ConceptActivation(tuple(clipped), tuple(clipped.values()))


def take(batch: EpisodeBatch, ep: episodic_pb2.Episode, selection: Selection, now_ms: int) -> bool:
    """Offer ``batch`` the next unconsolidated episode (in seq order) if ``selection`` takes it;
    True once it holds ``max_episodes`` active ones, when the reader stops."""
    batch.last_seq = max(batch.last_seq, ep.seq)
    age_s = (now_ms - ep.timestamp.ToMilliseconds()) / 1000.0
    if not selection.accepts(age_s, ep.energy, ep.tags):
        return False
    act = activation_of_episode(ep)
    if not act.active_ids():
        if len(batch.inactive) < selection.max_episodes:
            batch.inactive.append(ep.id)
        return False
    batch.ids.append(ep.id)
    batch.activations.append(act)
    return len(batch.ids) >= selection.max_episodes


class VaultClient:
    """Async client of the vault over ``channel`` (to ``target``, host:port, named in errors).

    Make it with :meth:`of`, which takes the channel from the fleet's client factory (the vault's
    dial address and this service's key). ``timeout_s``: deadline of each unary call;
    ``scan_timeout_s``: of a whole Scan.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        target: str,
        timeout_s: float = 30.0,
        namespace: str = DEFAULT,
        scan_timeout_s: float = SCAN_TIMEOUT_S,
    ) -> None:
        self.target = target
        self._timeout = timeout_s
        self._scan_timeout = scan_timeout_s
        # Every call reads or marks this namespace's episodes only.
        self._md = namespace_metadata(namespace)
        self._channel = channel
        self._stub = episodic_pb2_grpc.EpisodicVaultStub(self._channel)

    @classmethod
    def of(
        cls,
        clients: ClientFactory,
        timeout_s: float = 30.0,
        namespace: str = DEFAULT,
        scan_timeout_s: float = SCAN_TIMEOUT_S,
    ) -> VaultClient:
        return cls(
            clients.aio_channel("episodic_vault"),
            clients.address("episodic_vault"),
            timeout_s,
            namespace,
            scan_timeout_s,
        )

    async def unconsolidated(self) -> int:
        """How many episodes the vault holds unconsolidated."""
        try:
            s = await self._stub.GetStats(
                episodic_pb2.GetStatsRequest(), timeout=self._timeout, metadata=self._md
            )
        except grpc.aio.AioRpcError as exc:
            raise VaultUnavailable(f"vault {self.target} GetStats failed: {exc.details()}") from exc
        return int(s.unconsolidated_count)

    async def select(self, selection: Selection) -> EpisodeBatch:
        """The unconsolidated episodes ``selection`` takes, oldest (lowest seq) first."""
        out = EpisodeBatch()
        now_ms = time.time_ns() // 1_000_000
        call = self._stub.Scan(
            episodic_pb2.ScanRequest(after_seq=0, only_unconsolidated=True),
            timeout=self._scan_timeout,
            metadata=self._md,
        )
        try:
            async for resp in call:
                if take(out, resp.episode, selection, now_ms):
                    call.cancel()
                    break
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise VaultUnavailable(
                    f"vault {self.target} Scan did not end within {self._scan_timeout:g} s "
                    "(sleep_scheduler.vault_scan_timeout_s): raise it, or lower max_episodes"
                ) from exc
            raise VaultUnavailable(f"vault {self.target} Scan failed: {exc.details()}") from exc
        return out

    async def mark(self, ids: list[str], graph_version: int) -> int:
        """Mark ``ids`` consolidated into ``graph_version``; returns how many were newly marked."""
        marked = 0
        for start in range(0, len(ids), MARK_BATCH):
            req = episodic_pb2.MarkConsolidatedRequest(
                episode_ids=ids[start : start + MARK_BATCH], graph_version=graph_version
            )
            try:
                resp = await self._stub.MarkConsolidated(
                    req, timeout=self._timeout, metadata=self._md
                )
            except grpc.aio.AioRpcError as exc:
                raise VaultUnavailable(
                    f"vault {self.target} MarkConsolidated failed: {exc.details()}"
                ) from exc
            marked += int(resp.marked)
        return marked

    async def close(self) -> None:
        await self._channel.close()
