"""The vault's domain metrics (names from mcp_services.common.metric_names)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mcp_services.common import metric_names as names
from mcp_services.common.grpc_metrics import LATENCY_BUCKETS
from mcp_services.episodic_vault.model import PutOutcome, PutStatus

BYTES_PER_MB = 1 << 20


class VaultMetrics:
    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self.episode_count = Gauge(
            names.VAULT_EPISODE_COUNT, "Episodes stored, all tiers.", registry=registry
        )
        self.size_mb = Gauge(
            names.VAULT_SIZE_MB, "Encoded size of the stored episodes in MiB.", registry=registry
        )
        self.size_bytes = Gauge(
            names.VAULT_SIZE_BYTES,
            "Encoded size of the stored episodes in bytes.",
            registry=registry,
        )
        self.put_seconds = Histogram(
            names.VAULT_PUT_SECONDS,
            "Time to store a put in the backend (unary: one episode; batch: one stream).",
            ["kind", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._backend = backend
        self.get_seconds = Histogram(
            names.VAULT_GET_SECONDS,
            "Time to read one episode from storage.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(backend)
        self.stored = Counter(
            names.VAULT_EPISODES_STORED,
            "Puts by outcome: created (new) or existing (idempotent repeat).",
            ["status"],
            registry=registry,
        )
        self.rejected = Counter(
            names.VAULT_REJECTED,
            "Episodes refused as invalid, by the kind of field at fault.",
            ["field"],
            registry=registry,
        )

    def set_totals(self, totals: tuple[int, int]) -> None:
        count, size = totals
        self.episode_count.set(count)
        self.size_bytes.set(size)
        self.size_mb.set(size / BYTES_PER_MB)

    def observe_put(
        self, kind: str, seconds: float, outcomes: Sequence[PutOutcome], totals: tuple[int, int]
    ) -> None:
        self.put_seconds.labels(kind, self._backend).observe(seconds)
        created = sum(o.status is PutStatus.CREATED for o in outcomes)
        self.stored.labels("created").inc(created)
        self.stored.labels("existing").inc(len(outcomes) - created)
        self.set_totals(totals)
