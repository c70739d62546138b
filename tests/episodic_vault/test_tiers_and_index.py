"""The tiered store directly: STM, pruning by importance, and the vector index's persistence."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from mcp_services.episodic_vault.adapters.memory_backend import MemoryBackend
from mcp_services.episodic_vault.adapters.postgres_backend import PostgresBackend
from mcp_services.episodic_vault.adapters.redis_backend import RedisBackend
from mcp_services.episodic_vault.adapters.sqlite_backend import SqliteBackend
from mcp_services.episodic_vault.adapters.storage import write_gate
from mcp_services.episodic_vault.domain.backend import VaultBackend
from mcp_services.episodic_vault.domain.importance import importance, least_important
from mcp_services.episodic_vault.domain.model import Episode, EpisodeFilter, Tier
from mcp_services.episodic_vault.domain.store import TieredStore
from mcp_services.episodic_vault.settings import (
    MemoryConfig,
    SqliteConfig,
    TiersConfig,
    VaultConfig,
)
from tests.episodic_vault.test_backend_contract import (  # noqa: F401  (fixtures)
    make_ep,
    pg_schema,
    postgres_config,
    redis_config,
    redis_prefix,
)

DIM = 8


def vec(i: int) -> tuple[float, ...]:
    return tuple(float(x) for x in np.random.default_rng(i).normal(size=DIM).astype(np.float32))


def ep(i: int, **kw: object) -> Episode:
    return dataclasses.replace(make_ep(i, embedding=vec(i)), **kw)  # type: ignore[arg-type]


def cfg(**kw: object) -> VaultConfig:
    return VaultConfig(embedding_dim=DIM, **kw)  # type: ignore[arg-type]


StoreFactory = Callable[..., TieredStore]


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens a TieredStore over a SQLite file in tmp_path (or a given backend opener)."""
    opened: list[TieredStore] = []

    def factory(
        config: VaultConfig | None = None,
        backend: Callable[[], VaultBackend] | None = None,
        index_path: Path | None = tmp_path / "index",
    ) -> TieredStore:
        c = config or cfg()
        b = backend() if backend else SqliteBackend(SqliteConfig(), tmp_path / "v.db")
        s = TieredStore(c, b, index_path, "test-store", write_gate=write_gate(c))
        s.report = s.open()  # type: ignore[attr-defined]
        opened.append(s)
        return s

    yield factory
    for s in opened:
        if not s.closed:
            s.close()


def nearest(store: TieredStore, i: int, k: int = 1) -> list[str]:
    hits, _, _ = store.search(vec(i), k, EpisodeFilter(), Tier.UNSPECIFIED)
    return [h.episode.id for h in hits]


class TestShortTermTier:
    def test_capacity_evicts_least_recently_used_to_mtm_losing_nothing(
        self, open_store: StoreFactory
    ) -> None:
        """Beyond STM's capacity the oldest episodes move to MTM and still read back."""
        s = open_store(cfg(tiers={"stm": {"capacity": 3}}))
        s.put_many([ep(i) for i in range(5)], 1)
        tiers = {t.tier: t.episode_count for t in s.stats().tiers}
        assert tiers == {Tier.STM: 3, Tier.MTM: 2}
        assert [e.tier for e in s.scan(0, 10, False)] == [Tier.MTM] * 2 + [Tier.STM] * 3
        assert s.get("ep-00000") is not None and s.get("ep-00000").tier is Tier.MTM  # type: ignore[union-attr]
        assert s.tier_totals()[Tier.STM][0] == 3

    def test_byte_cap_evicts_least_recently_used_to_mtm_losing_nothing(
        self, open_store: StoreFactory
    ) -> None:
        """Beyond stm.max_bytes the oldest episodes leave STM (large payloads cannot fill
        memory) and still read back from MTM."""
        big = [dataclasses.replace(ep(i), payload=bytes([i]) * 10_000) for i in range(6)]
        s = open_store(cfg(tiers={"stm": {"max_bytes": 25_000}}))
        s.put_many(big, 1)
        held, held_bytes = s.tier_totals()[Tier.STM]
        assert held == 2 and held_bytes <= 25_000
        assert [e.tier for e in s.scan(0, 10, False)] == [Tier.MTM] * 4 + [Tier.STM] * 2
        assert all(s.get(e.id).payload == e.payload for e in big)  # type: ignore[union-attr]

    def test_ttl_moves_episodes_out_of_stm(self, open_store: StoreFactory) -> None:
        """After stm.ttl_s an episode leaves STM (for MTM) at the next expiry pass."""
        s = open_store(cfg(tiers={"stm": {"ttl_s": 0.001}}))
        s.put_many([ep(1)], 1)
        import time

        time.sleep(0.01)  # past the 1 ms TTL; the assertion is on state, not on timing
        assert s.expire_stm() == 1
        got = s.get("ep-00001")
        assert got is not None and got.tier is Tier.MTM

    def test_consolidation_moves_episodes_from_stm_to_ltm(self, open_store: StoreFactory) -> None:
        """MarkConsolidated takes a hot episode to LTM; stats count it there once."""
        s = open_store()
        s.put_many([ep(1), ep(2)], 1)
        s.mark_consolidated(["ep-00001"], 3)
        got = s.get("ep-00001")
        assert got is not None and got.tier is Tier.LTM and got.graph_version == 3
        assert {t.tier: t.episode_count for t in s.stats().tiers} == {Tier.STM: 1, Tier.LTM: 1}


class TestPruning:
    def test_importance_matches_its_formula(self) -> None:
        """The importance score is the documented weighted sum, checked by hand."""
        c = TiersConfig()
        now = 10 * 3_600_000
        got = importance(
            c,
            np.array([1.0, 0.0]),
            np.array([3, 0]),
            np.array([now - 24 * 3_600_000, now]),
            np.array([1, 0]),
            now,
        )
        first = 0.35 * 0.5 + 0.25 * 0.5 + 0.25 * 0.5 + 0.15 * 0.5
        assert got == pytest.approx([first, 0.25])
        assert least_important(got, np.array([0, 1]), 1) == [1]

    def test_mtm_is_pruned_to_max_items_least_important_first(
        self, open_store: StoreFactory
    ) -> None:
        """Beyond mtm.max_items the lowest-energy episodes go, from every view and index."""
        s = open_store(cfg(tiers={"stm": {"capacity": 0}, "mtm": {"max_items": 4}}))
        s.put_many([ep(i, energy=float(i)) for i in range(10)], 1)
        assert s.prune_tiers(2) == {Tier.MTM: 6}
        assert [e.id for e in s.scan(0, 20, False)] == [f"ep-{i:05d}" for i in range(6, 10)]
        assert set(nearest(s, 0, k=10)) == {f"ep-{i:05d}" for i in range(6, 10)}
        hits = s.recall({"shared": 1.0}, 10, EpisodeFilter(), Tier.UNSPECIFIED)
        assert {h.episode.id for h in hits} == {f"ep-{i:05d}" for i in range(6, 10)}
        assert s.prune_tiers(3) == {}

    def test_ltm_limit_prunes_only_consolidated_episodes(self, open_store: StoreFactory) -> None:
        """ltm.max_items counts consolidated episodes; unconsolidated ones are untouched."""
        s = open_store(cfg(tiers={"ltm": {"max_items": 1}}))
        s.put_many([ep(i, energy=float(i)) for i in range(4)], 1)
        s.mark_consolidated(["ep-00000", "ep-00001"], 1)
        assert s.prune_tiers(2) == {Tier.LTM: 1}
        assert s.get("ep-00000") is None and s.get("ep-00001") is not None
        assert s.stats().episode_count == 3


class TestBoundedStore:
    def test_pruned_and_purged_episodes_leave_the_index_and_the_catalog(
        self, open_store: StoreFactory
    ) -> None:
        """A store held at mtm.max_items keeps a bounded index and catalog: deleted episodes'
        vectors become tombstones that compaction removes, dead catalog rows are renumbered
        away, and Search (through HNSW, not the exact path) never returns a deleted one."""
        s = open_store(
            cfg(
                # No weight on reads: the searches below must not change what is pruned.
                tiers={"stm": {"capacity": 0}, "mtm": {"max_items": 40}, "weight_access": 0.0},
                index={"exact_max_candidates": 0},
            )
        )
        assert s.index is not None
        for b in range(12):
            # Newer batches carry more energy, so each prune keeps the latest batch.
            batch = range(b * 40, b * 40 + 40)
            s.put_many([ep(i, energy=float(i)) for i in batch], 1)
            s.index.flush()
            assert s.prune_tiers(2) == ({Tier.MTM: 40} if b else {})
            s.index.compact_if_sparse()
            sizes = s.index.sizes()
            assert sizes["indexed"] == 40 and sizes["pending"] == 0
            assert sizes["indexed"] + sizes["tombstones"] <= 60  # at most a third dead
            assert s._catalog.n <= 40 + 64 and s._catalog.live == 40
            want = {f"ep-{i:05d}" for i in batch}
            assert set(nearest(s, batch[0], k=40)) == want
            hits = s.recall({"shared": 1.0}, 100, EpisodeFilter(), Tier.UNSPECIFIED)
            assert {h.episode.id for h in hits} == want
        assert s.purge_expired(2, 3, dry_run=False) == 40
        s.index.compact_if_sparse()
        assert s.index.sizes() == {"indexed": 0, "pending": 0, "tombstones": 0, "bytes": 0}
        assert nearest(s, 0) == []

    def test_staged_vectors_removed_before_insertion_never_reach_hnsw(
        self, open_store: StoreFactory
    ) -> None:
        """A vector deleted while still staged is dropped, not inserted as a ghost."""
        s = open_store(cfg(index={"exact_max_candidates": 0}))
        assert s.index is not None
        s.stop_background()  # the background indexer ends, so the vectors stay staged
        s.put_many([ep(i) for i in range(20)], 1)
        s.delete("ep-00003")
        assert s.index.sizes() | {"bytes": 0} == {
            "indexed": 0,
            "pending": 19,
            "tombstones": 0,
            "bytes": 0,
        }
        assert "ep-00003" not in nearest(s, 3, k=20)  # staged, searched exactly
        assert s.index.flush() == 20  # rows moved, the deleted one dropped
        assert s.index.sizes()["indexed"] == 19 and s.index.sizes()["tombstones"] == 0
        assert "ep-00003" not in nearest(s, 3, k=20) and len(nearest(s, 4, k=20)) == 19
        s.close()


class TestIndexPersistence:
    def test_restart_reloads_the_index_and_finds_the_same(self, open_store: StoreFactory) -> None:
        """A clean restart loads the saved index instead of rebuilding; results are unchanged."""
        s = open_store()
        s.put_many([ep(i) for i in range(50)], 1)
        before = [nearest(s, i, k=5) for i in range(5)]
        s.close()
        s2 = open_store()
        assert s2.report["index_loaded"] is True  # type: ignore[attr-defined]
        assert s2.report["vectors_added"] == 0  # type: ignore[attr-defined]
        assert [nearest(s2, i, k=5) for i in range(5)] == before

    @pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated", "foreign"])
    def test_a_missing_or_corrupt_index_is_rebuilt_from_the_backend(
        self, open_store: StoreFactory, tmp_path: Path, damage: str
    ) -> None:
        """Whatever happened to the files, the vault starts and searches everything correctly."""
        s = open_store()
        s.put_many([ep(i) for i in range(40)], 1)
        s.close()
        f = tmp_path / "index" / "index.faiss"
        if damage == "missing":
            f.unlink()
        elif damage == "corrupt":
            f.write_bytes(b"\x00" * 64 + f.read_bytes()[64:])
        elif damage == "truncated":
            f.write_bytes(f.read_bytes()[:100])
        else:
            m = tmp_path / "index" / "manifest.json"
            m.write_text(m.read_text().replace("test-store", "another-store"))
        s2 = open_store()
        assert s2.report["index_loaded"] is False  # type: ignore[attr-defined]
        assert s2.report["vectors_added"] == 40  # type: ignore[attr-defined]
        assert all(nearest(s2, i) == [f"ep-{i:05d}"] for i in range(40))

    def test_changes_made_while_down_are_reconciled(
        self, open_store: StoreFactory, tmp_path: Path
    ) -> None:
        """Deleted while the vault was down: gone from search; added meanwhile: found."""
        s = open_store()
        s.put_many([ep(i) for i in range(10)], 1)
        s.close()
        raw = SqliteBackend(SqliteConfig(), tmp_path / "v.db")
        raw.delete("ep-00003")
        raw.put_many([ep(42)], 2)
        raw.close()
        s2 = open_store()
        assert s2.report["index_loaded"] is True  # type: ignore[attr-defined]
        assert s2.report["vectors_dropped"] == 1 and s2.report["vectors_added"] == 1  # type: ignore[attr-defined]
        assert "ep-00003" not in nearest(s2, 3, k=20)
        assert nearest(s2, 42) == ["ep-00042"]

    def test_a_recreated_store_never_matches_old_vectors(
        self, open_store: StoreFactory, tmp_path: Path
    ) -> None:
        """An index left from a deleted database is not reused for new episodes with the same seqs."""
        s = open_store()
        s.put_many([ep(i) for i in range(5)], 1)
        s.close()
        (tmp_path / "v.db").unlink()
        s2 = open_store()
        s2.put_many([dataclasses.replace(ep(100 + i), id=f"new-{i}") for i in range(5)], 1)
        s2.close()
        s3 = open_store()
        assert nearest(s3, 100) == ["new-0"]
        assert s3.index is not None and len(s3.index) == 5

    @pytest.mark.parametrize("kind", ["memory-snapshot", "redis", "postgres"])
    def test_durable_backends_lose_nothing_and_reload_the_index(
        self, open_store: StoreFactory, tmp_path: Path, request: pytest.FixtureRequest, kind: str
    ) -> None:
        """Restarting over a durable backend keeps every episode and reloads the index."""
        opener: Callable[[], VaultBackend]
        if kind == "redis":
            prefix = request.getfixturevalue("redis_prefix")
            opener = lambda: RedisBackend(redis_config(prefix))  # noqa: E731
        elif kind == "postgres":
            schema = request.getfixturevalue("pg_schema")
            opener = lambda: PostgresBackend(postgres_config(schema))  # noqa: E731
        else:
            opener = lambda: MemoryBackend(  # noqa: E731
                MemoryConfig(snapshot_interval_s=3600), tmp_path / "snap.bin"
            )
        s = open_store(backend=opener)
        s.put_many([ep(i) for i in range(30)], 1)
        s.mark_consolidated(["ep-00001"], 2)
        s.close()
        s2 = open_store(backend=opener)
        assert s2.report["index_loaded"] is True and s2.report["episodes"] == 30  # type: ignore[attr-defined]
        assert all(nearest(s2, i) == [f"ep-{i:05d}"] for i in range(30))
        hits, _, _ = s2.search(vec(1), 5, EpisodeFilter(), Tier.LTM)
        assert [h.episode.id for h in hits] == ["ep-00001"]
