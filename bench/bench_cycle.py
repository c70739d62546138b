"""Cost of one consolidation cycle as the number of episodes grows.

Episodes of 20 active concepts over 10k concepts: planted assemblies of 20 concepts, each seen
as 5 episodes with 2 of its members swapped (so 1k episodes = 200 assemblies). Each size runs one
cycle from an empty graph with a fixed epoch budget (``--epochs``, default 10; the stopping rule
is evaluated but the budget bounds the work so sizes compare), and reports wall time, time per
sleep epoch, the time of the merge step alone, edges and the fitted growth exponent of cycle
time against episodes (1.0 = linear).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cycle.py`` (1k, 3k, 10k episodes) or with
``--full`` (adds 100k); writes bench/results/bench_cycle.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mcp_services.sleep_scheduler.domain import (
    ConceptGraph,
    ConceptIndex,
    ConsolidationConfig,
    consolidate_states,
)
from mcp_services.sleep_scheduler.domain.planted import planted_sparse
from mcp_services.sleep_scheduler.domain.prototypes import merge_episodes

RESULTS = Path(__file__).resolve().parent / "results" / "bench_cycle.json"
CONCEPTS = 10_000
ACTIVE = 20
COPIES = 5


def run_size(episodes: int, epochs: int, seed: int) -> dict[str, Any]:
    """One cycle over ``episodes`` planted episodes; returns its figures."""
    frac = ACTIVE / CONCEPTS
    data = planted_sparse(
        CONCEPTS, episodes // COPIES, activity=(frac, frac), copies=COPIES, seed=seed
    )
    graph = ConceptGraph.empty(ConceptIndex.of_size(CONCEPTS))
    t = time.perf_counter()
    protos = merge_episodes(data.episodes)
    merge_s = time.perf_counter() - t
    cfg = ConsolidationConfig(max_epochs=epochs, eval_every=5, max_validation=1024, seed=seed)
    t = time.perf_counter()
    out = consolidate_states(graph, data.episodes, cfg)
    cycle_s = time.perf_counter() - t
    row: dict[str, Any] = {
        "episodes": episodes,
        "prototypes": out.prototypes.count,
        "prototypes_expected": episodes // COPIES,
        "merge_seconds": round(merge_s, 3),
        "cycle_seconds": round(cycle_s, 3),
        "seconds_per_epoch": round(cycle_s / max(out.stats.epochs_run, 1), 4),
        "epochs": out.stats.epochs_run,
        "edges": out.graph.edge_count,
        "energy_delta": out.stats.energy_delta,
        "settle_loops": out.stats.settle_loops,
        "stability_after": out.stats.stability_after.recall,
        "merged_correctly": bool(protos.count == episodes // COPIES),
    }
    print(json.dumps(row), flush=True)
    return row


def growth_exponent(rows: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of log(key) against log(episodes)."""
    x = np.log([float(r["episodes"]) for r in rows])
    y = np.log([max(float(r[key]), 1e-9) for r in rows])
    return float(np.polyfit(x, y, 1)[0]) if len(rows) > 1 else math.nan


def main() -> None:
    """Run the sizes, write the JSON and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="include 100k episodes")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [1_000, 3_000, 10_000] + ([100_000] if args.full else [])
    rows = [run_size(n, args.epochs, args.seed) for n in sizes]
    result = {
        "concepts": CONCEPTS,
        "active_per_episode": ACTIVE,
        "epochs_budget": args.epochs,
        "rows": rows,
        "growth_exponent_cycle": growth_exponent(rows, "cycle_seconds"),
        "growth_exponent_merge": growth_exponent(rows, "merge_seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
