"""Importance of an episode, for pruning a tier down to its max_items.

    importance = w_e * e / (1 + e)              energy e >= 0
               + w_r * r / (3 + r)              ref_count r (3 is where PurgeTTL starts keeping)
               + w_t * 2^(-age_h / half_life)   recency since stored
               + w_a * a / (1 + a)              a: reads (Get, Search, Recall hits) this run

Each term is squashed into [0, 1) so no one unbounded quantity dominates; the weights come from
vault.tiers. Access counts live in memory only: after a restart every episode starts at 0.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from mcp_services.episodic_vault.settings import TiersConfig

F64 = npt.NDArray[np.float64]


def importance(
    cfg: TiersConfig,
    energy: F64,
    ref_count: npt.NDArray[np.int64],
    stored_ms: npt.NDArray[np.int64],
    access: npt.NDArray[np.int64],
    now_ms: int,
) -> F64:
    age_h = np.maximum(now_ms - stored_ms, 0) / 3_600_000.0
    r = ref_count.astype(np.float64)
    a = access.astype(np.float64)
    out: F64 = (
        cfg.weight_energy * energy / (1.0 + energy)
        + cfg.weight_ref_count * r / (3.0 + r)
        + cfg.weight_recency * np.exp2(-age_h / cfg.recency_half_life_h)
        + cfg.weight_access * a / (1.0 + a)
    )
    return out


def least_important(scores: F64, rows: npt.NDArray[np.int64], excess: int) -> list[int]:
    """The `excess` rows of lowest importance (ties: the older row, i.e. smaller row, first)."""
    if excess <= 0 or len(rows) == 0:
        return []
    order = np.lexsort((rows, scores[rows]))
    return [int(r) for r in rows[order[:excess]]]
