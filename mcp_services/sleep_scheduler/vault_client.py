"""The scheduler's client of the EpisodicVault: unconsolidated episodes in, marks out.

Only the vault's public gRPC API is used (Scan with only_unconsolidated, MarkConsolidated,
GetStats). Selection filters (age, tags, energy) are applied here as the episodes stream by, so a
cycle takes at most ``max_episodes`` matching episodes, oldest first. Every call has a deadline:
``timeout_s`` for the unary calls, ``scan_timeout_s`` (sleep_scheduler.vault_scan_timeout_s) for
the Scan as a whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc

from mcp_services.common.clients import ClientFactory
from mcp_services.common.errors import InputError
from mcp_services.common.namespaces import DEFAULT, namespace_metadata
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.sleep_scheduler.domain import ConceptActivation

MARK_BATCH = 10_000
"""The vault takes at most this many ids per MarkConsolidated call."""
SCAN_TIMEOUT_S = 300.0
"""Default deadline of a whole Scan (sleep_scheduler.vault_scan_timeout_s)."""


class VaultUnavailable(Exception):
    """The vault could not be reached or refused a call; the message says which and why."""


@dataclass(frozen=True)
class Selection:
    """Which unconsolidated episodes a cycle takes (filters combine with AND)."""

    min_age_s: float = 0.0
    max_age_s: float = 0.0
    tags: tuple[str, ...] = ()
    min_energy: float = 0.0
    max_episodes: int = 100_000

    def __post_init__(self) -> None:
        if self.min_age_s < 0 or self.max_age_s < 0:
            raise InputError("selection.min_age_s and max_age_s must be >= 0 (0: no bound)")
        if self.max_age_s and self.max_age_s < self.min_age_s:
            raise InputError("selection.max_age_s must be >= min_age_s (or 0: no bound)")
        if self.max_episodes < 1:
            raise InputError("selection.max_episodes must be >= 1")
        if any(not t for t in self.tags):
            raise InputError("selection.tags holds an empty tag: list non-empty tags")

    def accepts(self, ep: episodic_pb2.Episode, now_ms: int) -> bool:
        age_s = (now_ms - ep.timestamp.ToMilliseconds()) / 1000.0
        if age_s < self.min_age_s or (self.max_age_s and age_s > self.max_age_s):
            return False
        if ep.energy < self.min_energy:
            return False
        return not self.tags or set(self.tags).issubset(ep.tags)


@dataclass
class EpisodeBatch:
    """The episodes of one cycle: ids and their activations, in vault order."""

    ids: list[str] = field(default_factory=list)
    # Selected episodes with no active concept (every strength <= 0.5): nothing to learn from,
    # but read by the cycle, so they are marked with the rest and stop counting as backlog.
    inactive: list[str] = field(default_factory=list)
    activations: list[ConceptActivation] = field(default_factory=list)
    last_seq: int = 0


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
                ep = resp.episode
                out.last_seq = max(out.last_seq, ep.seq)
                if not selection.accepts(ep, now_ms):
                    continue
                act = activation_of_episode(ep)
                if not act.active_ids():
                    if len(out.inactive) < selection.max_episodes:
                        out.inactive.append(ep.id)
                    continue
                out.ids.append(ep.id)
                out.activations.append(act)
                if len(out.ids) >= selection.max_episodes:
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
