"""One tiered store per namespace: the vault's tenant isolation.

Every namespace has a store of its own (backend, STM, catalog, vector index), so a read, write, id,
list, scan, search, recall, stats, mark, purge or delete of one namespace can only ever see that
namespace's episodes, and ids are unique per namespace. The ``default`` namespace is the store the
configuration names, exactly where a vault without namespaces keeps it, so existing data is the
default namespace as it lies (nothing to migrate). Another namespace ``ns`` lives beside it:

    sqlite     <dir of vault.sqlite.path>/namespaces/<ns>/<file name>
    memory     <dir of vault.memory.snapshot_file>/namespaces/<ns>/<file name> (when set)
    redis      keys under <vault.redis.key_prefix>ns/<ns>/ (a namespace has no "/", so no prefix
               of one namespace is a prefix of another's, nor of the default's keys)
    postgres   schema <schema_name>_ns_<16 hex of sha256(schema_name, ns)> (PostgreSQL's 63-byte
               lowercase identifiers cannot hold every namespace name as it is)
    index      vault.index.dir/namespaces/<ns> when vault.index.dir is set, else beside the data

A namespace's store opens at its first call (sqlite and memory stores found on disk open at start,
so their tier pruning runs from then). At most MAX_OPEN namespaces are open in one vault.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import structlog

from mcp_services.common.config import resolve_path
from mcp_services.common.namespaces import (
    DEFAULT,
    NAMESPACE_RE,
    NAMESPACES_DIR,
    PerNamespace,
    current_namespace,
)
from mcp_services.episodic_vault.adapters.storage import (
    index_dir,
    open_backend,
    store_identity,
    write_gate,
)
from mcp_services.episodic_vault.domain.model import (
    Episode,
    EpisodeFilter,
    ListCursor,
    MarkOutcome,
    PutOutcome,
    Tier,
    VaultStats,
)
from mcp_services.episodic_vault.domain.spool import EpisodeSpool
from mcp_services.episodic_vault.domain.store import (
    RecallHit,
    SearchHit,
    TieredStore,
)
from mcp_services.episodic_vault.domain.vector_index import VectorIndex
from mcp_services.episodic_vault.settings import VaultConfig

log = structlog.get_logger(__name__)

# Each open namespace holds a backend connection, two threads and its index in memory.
MAX_OPEN = 256


def _beside(path: str, namespace: str) -> str:
    p = PurePath(path)
    return str(p.parent / NAMESPACES_DIR / namespace / p.name)


def postgres_schema(schema: str, namespace: str) -> str:
    digest = hashlib.sha256(f"{schema}\0{namespace}".encode()).hexdigest()[:16]
    return f"{schema[:42]}_ns_{digest}"


def namespace_config(cfg: VaultConfig, namespace: str) -> VaultConfig:
    """The vault configuration of ``namespace``'s store (``cfg`` itself for the default)."""
    if namespace == DEFAULT:
        return cfg
    update: dict[str, object] = {}
    if cfg.backend == "sqlite":
        update["sqlite"] = cfg.sqlite.model_copy(
            update={"path": _beside(cfg.sqlite.path, namespace)}
        )
    elif cfg.backend == "memory" and cfg.memory.snapshot_file:
        update["memory"] = cfg.memory.model_copy(
            update={"snapshot_file": _beside(cfg.memory.snapshot_file, namespace)}
        )
    elif cfg.backend == "redis":
        prefix = f"{cfg.redis.key_prefix}ns/{namespace}/"
        update["redis"] = cfg.redis.model_copy(update={"key_prefix": prefix})
    elif cfg.backend == "postgres":
        schema = postgres_schema(cfg.postgres.schema_name, namespace)
        update["postgres"] = cfg.postgres.model_copy(update={"schema_name": schema})
    if cfg.index.dir:
        index = str(PurePath(cfg.index.dir) / NAMESPACES_DIR / namespace)
        update["index"] = cfg.index.model_copy(update={"dir": index})
    return cfg.model_copy(update=update)


def stored_namespaces(cfg: VaultConfig) -> list[str]:
    """The non-default namespaces whose files exist (sqlite, memory with a snapshot); server
    backends' namespaces are not listed (they open at their first call)."""
    where = cfg.sqlite.path if cfg.backend == "sqlite" else cfg.memory.snapshot_file
    if cfg.backend not in ("sqlite", "memory") or not where:
        return []
    data = resolve_path(where)
    root = data.parent / NAMESPACES_DIR
    if not root.is_dir():
        return []
    return sorted(
        d.name
        for d in root.iterdir()
        if NAMESPACE_RE.fullmatch(d.name) and d.name != DEFAULT and (d / data.name).exists()
    )


def open_store(cfg: VaultConfig, var_dir: str) -> TieredStore:
    """Open the backend ``cfg`` names and build its tiered store (catalog, index)."""
    backend = open_backend(cfg)
    store = TieredStore(
        cfg, backend, index_dir(cfg, var_dir), store_identity(cfg), write_gate=write_gate(cfg)
    )
    try:
        store.open()
    except BaseException:
        backend.close()
        raise
    return store


class NamespaceStores:
    """The open stores by namespace. Thread-safe; open() blocks (call it off the event loop)."""

    def __init__(
        self, cfg: VaultConfig, opener: Callable[[VaultConfig], TieredStore] | None = None
    ) -> None:
        make = opener or (lambda c: open_store(c, "var"))
        self._stores = PerNamespace(lambda ns: make(namespace_config(cfg, ns)), MAX_OPEN, "vault")

    def get(self, namespace: str) -> TieredStore | None:
        return self._stores.get(namespace)

    def open(self, namespace: str) -> TieredStore:
        """The namespace's store, opened (files, schema, index) when it is not open yet."""
        known = self._stores.get(namespace)
        store = self._stores.open(namespace)
        if known is None:
            log.info("vault_namespace_opened", namespace=namespace, backend=store.name)
        return store

    def all(self) -> list[TieredStore]:
        return [store for _, store in self._stores.items()]

    def close(self) -> None:
        for store in self._stores.take():
            store.close()


class ScopedStore:
    """The store interface the servicer uses, answered by the calling namespace's store.

    The namespace is common.namespaces.current_namespace(), set for each call by the scoped
    servicer registration (and carried into worker threads by a ContextExecutor). Totals, tier
    totals, pruning counts and index sizes, which only feed the vault's own metrics, add up every
    open namespace.
    """

    def __init__(self, stores: NamespaceStores, backend_name: str) -> None:
        self._stores = stores
        self.name = backend_name

    def here(self) -> TieredStore:
        return self._stores.open(current_namespace())

    def __getattr__(self, name: str) -> Any:
        # Whatever else the servicer asks of a store is the calling namespace's too.
        return getattr(self.here(), name)

    @property
    def index(self) -> VectorIndex | None:
        return self.here().index

    def put_many(self, episodes: Sequence[Episode], stored_ms: int) -> list[PutOutcome]:
        return self.here().put_many(episodes, stored_ms)

    def put_spooled(self, spool: EpisodeSpool, stored_ms: int) -> list[PutOutcome]:
        return self.here().put_spooled(spool, stored_ms)

    def get(self, episode_id: str) -> Episode | None:
        return self.here().get(episode_id)

    def get_many(self, episode_ids: Sequence[str]) -> dict[str, Episode]:
        return self.here().get_many(episode_ids)

    def list_recent(
        self, flt: EpisodeFilter, limit: int, after: ListCursor | None
    ) -> list[Episode]:
        return self.here().list_recent(flt, limit, after)

    def scan(self, after_seq: int, limit: int, only_unconsolidated: bool) -> list[Episode]:
        return self.here().scan(after_seq, limit, only_unconsolidated)

    def delete(self, episode_id: str) -> bool:
        return self.here().delete(episode_id)

    def mark_consolidated(self, episode_ids: Sequence[str], graph_version: int) -> MarkOutcome:
        return self.here().mark_consolidated(episode_ids, graph_version)

    def purge_expired(self, stored_before_ms: int, keep_ref_count: int, dry_run: bool) -> int:
        return self.here().purge_expired(stored_before_ms, keep_ref_count, dry_run)

    def stats(self) -> VaultStats:
        return self.here().stats()

    def search(
        self, query: Sequence[float], k: int, flt: EpisodeFilter, tier: Tier
    ) -> tuple[list[SearchHit], bool, int]:
        return self.here().search(query, k, flt, tier)

    def recall(
        self, cue: Mapping[str, float], k: int, flt: EpisodeFilter, tier: Tier
    ) -> list[RecallHit]:
        return self.here().recall(cue, k, flt, tier)

    # -- every namespace: the vault's metrics ------------------------------------------------
    def totals(self) -> tuple[int, int]:
        sums = [s.totals() for s in self._stores.all()]
        return sum(n for n, _ in sums), sum(b for _, b in sums)

    def tier_totals(self) -> dict[Tier, tuple[int, int]]:
        out = {t: (0, 0) for t in (Tier.STM, Tier.MTM, Tier.LTM)}
        for store in self._stores.all():
            for t, (n, b) in store.tier_totals().items():
                out[t] = (out[t][0] + n, out[t][1] + b)
        return out

    @property
    def pruned(self) -> dict[Tier, int]:
        out = {Tier.MTM: 0, Tier.LTM: 0}
        for store in self._stores.all():
            for t, n in store.pruned.items():
                out[t] += n
        return out

    def index_sizes(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for store in self._stores.all():
            if store.index is not None:
                for key, v in store.index.sizes().items():
                    out[key] = out.get(key, 0) + v
        return out
