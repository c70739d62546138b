"""The vault's domain metrics (names from mcp_services.common.metric_names, and the per-tier,
per-operation and index ones below, which belong there once that shared file takes them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mcp_services.common import metric_names as names
from mcp_services.common.grpc_metrics import LATENCY_BUCKETS
from mcp_services.episodic_vault.domain.model import PutOutcome, PutStatus, Tier

if TYPE_CHECKING:
    from mcp_services.episodic_vault.namespaces import ScopedStore

BYTES_PER_MB = 1 << 20

VAULT_OP_SECONDS = "vault_op_seconds"
VAULT_OP_ERRORS = "vault_op_errors_total"
VAULT_TIER_EPISODES = "vault_tier_episodes"
VAULT_TIER_BYTES = "vault_tier_bytes"
VAULT_INDEX_VECTORS = "vault_index_vectors"
VAULT_INDEX_BYTES = "vault_index_bytes"
VAULT_RECALL_COMPLETION = "vault_recall_completion_total"
VAULT_PRUNED = "vault_pruned_episodes"


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
        self.op_seconds = Histogram(
            VAULT_OP_SECONDS,
            "Time of each storage operation (through the tiers and indexes), per backend.",
            ["op", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.op_errors = Counter(
            VAULT_OP_ERRORS,
            "Storage operations that failed (backend unavailable or full), per backend.",
            ["op", "backend"],
            registry=registry,
        )
        self.tier_episodes = Gauge(
            VAULT_TIER_EPISODES, "Episodes per tier (stm, mtm, ltm).", ["tier"], registry=registry
        )
        self.tier_bytes = Gauge(
            VAULT_TIER_BYTES, "Encoded bytes per tier.", ["tier"], registry=registry
        )
        self.index_vectors = Gauge(
            VAULT_INDEX_VECTORS,
            "Vectors in the HNSW index (indexed), staged for it (pending) or deleted (tombstones).",
            ["state"],
            registry=registry,
        )
        self.index_bytes = Gauge(
            VAULT_INDEX_BYTES, "Approximate memory of the vector index.", registry=registry
        )
        self.completion = Counter(
            VAULT_RECALL_COMPLETION,
            "Recalls by completion outcome (applied, disabled, unavailable).",
            ["outcome"],
            registry=registry,
        )
        self.pruned = Gauge(
            VAULT_PRUNED,
            "Episodes deleted by importance pruning since start, per tier.",
            ["tier"],
            registry=registry,
        )
        self.rejected = Counter(
            names.VAULT_REJECTED,
            "Episodes refused as invalid, by the kind of field at fault.",
            ["field"],
            registry=registry,
        )

    def observe_op(self, op: str, seconds: float) -> None:
        self.op_seconds.labels(op, self._backend).observe(seconds)

    def watch_store(self, store: ScopedStore) -> None:
        """Tier and index gauges read the stores (every namespace's) at scrape time."""

        def tier_count(t: Tier) -> Callable[[], float]:
            return lambda: float(store.tier_totals()[t][0])

        def tier_bytes(t: Tier) -> Callable[[], float]:
            return lambda: float(store.tier_totals()[t][1])

        def pruned(t: Tier) -> Callable[[], float]:
            return lambda: float(store.pruned[t])

        for tier in (Tier.STM, Tier.MTM, Tier.LTM):
            name = tier.name.lower()
            self.tier_episodes.labels(name).set_function(tier_count(tier))
            self.tier_bytes.labels(name).set_function(tier_bytes(tier))
            if tier is not Tier.STM:
                self.pruned.labels(name).set_function(pruned(tier))
        if store.index is not None:

            def size(key: str) -> Callable[[], float]:
                return lambda: float(store.index_sizes().get(key, 0))

            for state in ("indexed", "pending", "tombstones"):
                self.index_vectors.labels(state).set_function(size(state))
            self.index_bytes.set_function(size("bytes"))

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
