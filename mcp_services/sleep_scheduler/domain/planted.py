"""Planted memories for tests and benchmarks: known patterns and their noisy, unlabelled episodes.

Two shapes, as in the done-when items:

* dense ±1 patterns over all N concepts; an episode is a copy with exactly ``noise * N`` concepts
  flipped, presented as the activation of its +1 concepts (the ±1 <-> {0, 1} mapping of
  :mod:`.activations`);
* sparse assemblies (the host AI's shape: 2-5% of the concepts active); an episode swaps
  ``round(noise * members)`` members for random non-members, keeping the activity level.

Episodes are returned shuffled, so nothing tells which pattern an episode came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from mcp_services.sleep_scheduler.domain.activations import pm1_to_states
from mcp_services.sleep_scheduler.domain.quality import flip_pm1
from mcp_services.sleep_scheduler.domain.wake_sleep import swap_noise


@dataclass(frozen=True)
class PlantedPm1:
    """Dense planted data.

    Attributes:
        patterns: (P, N) int8 ±1 patterns.
        episodes: (P * copies, N) CSR {0, 1} episode states, shuffled.
        source: (P * copies,) pattern row of each episode (for checks only, never for learning).
    """

    patterns: NDArray[np.int8]
    episodes: sp.csr_matrix
    source: NDArray[np.int64]


@dataclass(frozen=True)
class PlantedSparse:
    """Sparse planted data: (P, N) CSR {0, 1} assemblies, shuffled episodes and their source."""

    patterns: sp.csr_matrix
    episodes: sp.csr_matrix
    source: NDArray[np.int64]


def _check(n: int, p: int, copies: int, noise: float) -> None:
    if n < 1 or p < 0:
        raise ValueError(f"n={n}, p={p}: need n >= 1 concepts and p >= 0 patterns")
    if copies < 1:
        raise ValueError(f"copies={copies} must be >= 1")
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise={noise} must be in [0, 0.5), e.g. 0.1")


def planted_pm1(n: int, p: int, copies: int = 5, noise: float = 0.1, seed: int = 0) -> PlantedPm1:
    """``p`` random ±1 patterns over ``n`` concepts, each seen as ``copies`` noisy episodes.

    Raises:
        ValueError: if a size is out of range or ``noise`` is outside [0, 0.5).
    """
    _check(n, p, copies, noise)
    rng = np.random.default_rng(seed)
    patterns = rng.choice(np.array([-1, 1], dtype=np.int8), size=(p, n))
    source = np.tile(np.arange(p, dtype=np.int64), copies)
    rng.shuffle(source)
    noisy = flip_pm1(patterns[source], noise, rng)
    return PlantedPm1(patterns, sp.csr_matrix(pm1_to_states(noisy)), source)


def planted_sparse(
    n: int,
    p: int,
    activity: tuple[float, float] = (0.02, 0.05),
    copies: int = 5,
    noise: float = 0.1,
    seed: int = 0,
) -> PlantedSparse:
    """``p`` random assemblies over ``n`` concepts, each of ``U(activity) * n`` members.

    Raises:
        ValueError: if a size is out of range or ``activity`` is not within (0, 0.5].
    """
    _check(n, p, copies, noise)
    lo, hi = activity
    if not 0.0 < lo <= hi <= 0.5:
        raise ValueError(f"activity={activity} must satisfy 0 < low <= high <= 0.5")
    rng = np.random.default_rng(seed)
    rows: list[NDArray[np.int64]] = []
    for _ in range(p):
        size = max(2, round(rng.uniform(lo, hi) * n))
        rows.append(np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64))
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    idx = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    patterns = sp.csr_matrix((np.ones(len(idx)), idx, indptr), shape=(p, n))
    source = np.tile(np.arange(p, dtype=np.int64), copies)
    rng.shuffle(source)
    episodes = swap_noise(patterns[source], noise, np.arange(n, dtype=np.int64), rng)
    return PlantedSparse(patterns, episodes, source)
