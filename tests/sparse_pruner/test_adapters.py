"""Unit tests of the service's adapters: the {0, 1} <-> +-1 conversion, backups, knobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from mcp_services.sparse_pruner.adapters.backups import BackupNotFound, BackupStore
from mcp_services.sparse_pruner.domain.knobs import KnobError, RunOverrides, run_settings
from mcp_services.sparse_pruner.domain.snapshot import GraphSnapshot, from_pm1, to_pm1
from mcp_services.sparse_pruner.settings import SparsePrunerConfig


def _random_snapshot(n: int = 30, seed: int = 0) -> GraphSnapshot:
    rng = np.random.default_rng(seed)
    upper = sp.random(n, n, density=0.3, random_state=seed, format="csr")
    upper = sp.triu(upper, k=1)
    upper.data = rng.standard_normal(upper.nnz)
    w = sp.csr_matrix(upper + upper.T)
    protos = tuple(np.sort(rng.choice(n, 5, replace=False)).astype(np.int64) for _ in range(4))
    return GraphSnapshot(
        7, tuple(f"c{k}" for k in range(n)), w, rng.standard_normal(n), protos, (1, 2, 3, 4)
    )


class TestConversion:
    """+-1 and {0, 1} graphs give every concept the same local field."""

    def test_fields_are_equal_and_the_round_trip_is_exact(self) -> None:
        """W s + b == J sigma + h for random states, and from_pm1(to_pm1(g)) == g."""
        g = _random_snapshot()
        pm1 = to_pm1(g)
        rng = np.random.default_rng(1)
        s = (rng.random((20, g.n_concepts)) < 0.5).astype(float)
        field01 = np.asarray(g.weights @ s.T).T + g.biases
        fieldpm = np.asarray(pm1.weights @ (2 * s - 1).T).T + pm1.biases
        np.testing.assert_allclose(field01, fieldpm, rtol=1e-12, atol=1e-12)
        back = from_pm1(pm1, g)
        assert abs(back.weights - g.weights).max() == 0.0
        np.testing.assert_allclose(back.biases, g.biases, rtol=0, atol=1e-12)

    def test_prototypes_map_active_to_plus_one(self) -> None:
        """Active concepts are +1, all others -1."""
        g = _random_snapshot()
        xi = g.pm1_prototypes()
        assert xi.shape == (4, g.n_concepts)
        for row, active in zip(xi, g.prototypes, strict=True):
            assert set(np.flatnonzero(row > 0)) == set(active.tolist())


class TestBackups:
    """Backups load exactly as saved and only the newest are kept."""

    def test_round_trip_and_retention(self, tmp_path: Path) -> None:
        """Three saves with retention 2 keep the last two, which load identically."""
        store = BackupStore(tmp_path, retention=2)
        graphs = [_random_snapshot(seed=k) for k in range(3)]
        infos = [store.save(g, 0, f"job{k}") for k, g in enumerate(graphs)]
        listed = store.list()
        assert [i.backup_id for i in listed] == [infos[2].backup_id, infos[1].backup_id]
        with pytest.raises(BackupNotFound):
            store.load(infos[0].backup_id)
        info, loaded = store.load(infos[2].backup_id)
        g = graphs[2]
        assert loaded.concept_ids == g.concept_ids
        assert abs(loaded.weights - g.weights).nnz == 0
        np.testing.assert_array_equal(loaded.biases, g.biases)
        for p, q in zip(loaded.prototypes, g.prototypes, strict=True):
            np.testing.assert_array_equal(p, q)
        assert loaded.support == g.support
        assert store.mark_committed(info.backup_id, 9).pruned_version == 9
        assert store.list()[0].pruned_version == 9
        store.discard(info.backup_id)
        assert [i.backup_id for i in store.list()] == [infos[1].backup_id]

    def test_unknown_id(self, tmp_path: Path) -> None:
        """An id that is not a backup is BackupNotFound, whatever its shape."""
        store = BackupStore(tmp_path, retention=2)
        for bad in ("nope", "../../etc/passwd", "0" * 26):
            with pytest.raises(BackupNotFound):
                store.load(bad)


class TestKnobs:
    """The operators' tau is in units of lambda_max / 100; knobs validate by name."""

    def test_default_tau_is_a_tenth_of_lambda_max(self) -> None:
        """tau 0.001 (the guide's default) runs the domain at 0.1 lambda_max."""
        knobs = SparsePrunerConfig()
        assert run_settings(knobs).tau == pytest.approx(0.1)
        assert run_settings(knobs, RunOverrides(tau=0.01)).tau == pytest.approx(1.0)
        assert run_settings(knobs, RunOverrides(max_edges_to_prune=0)).max_edges_to_prune is None

    @pytest.mark.parametrize(
        ("field", "value"),
        [("tau", 0.02), ("tau", 0.0), ("l1_threshold", 1.0), ("max_quality_drop", -0.1),
         ("retention_target", 2.0), ("max_edges_to_prune", -1), ("max_backoffs", 50)],
    )  # fmt: skip
    def test_bad_knob_names_the_field(self, field: str, value: float) -> None:
        """An out-of-range override raises KnobError naming the field."""
        knobs = SparsePrunerConfig()
        with pytest.raises(KnobError, match=field):
            run_settings(knobs, RunOverrides(**{field: value}))  # type: ignore[arg-type]
