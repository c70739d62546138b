"""Capacity of consolidation against peer rules on the same unlabelled noisy episodes.

Dense: N = 400 random ±1 patterns at loads alpha = P/N in {0.05, 0.1, 0.2, 0.3, 0.4, 0.5}, each
seen only as 5 episodes with 10% of the concepts flipped; a pattern is recalled when its cue with
10% flipped settles (T = 0) to overlap >= 0.95. Rules: ``consolidation`` (this package),
``hebbian`` (covariance Hebbian on the raw episodes), ``wake_sleep`` (the literal wake-sleep rule
on the raw episodes, see domain/baselines.py), and the two baselines again on the merged
prototypes (``hebbian_merged``, ``wake_sleep_merged``) to separate the effect of merging from that
of the learning rule. Also the spurious share (random starts settling near no pattern) and the
cycle's energy_delta.

Sparse: N = 2000 assemblies of 2-5% active concepts, same episode scheme (10% of the members
swapped); ``hebbian`` is the covariance rule with its threshold tuned on the true recall (an
oracle that favours the baseline).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_capacity.py [--quick]``; writes
bench/results/bench_capacity.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import scipy.sparse as sp

from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex, consolidate_states
from mcp_services.sleep_scheduler.domain.activations import pm1_to_states
from mcp_services.sleep_scheduler.domain.baselines import hebbian_graph, plain_wake_sleep
from mcp_services.sleep_scheduler.domain.planted import planted_pm1, planted_sparse
from mcp_services.sleep_scheduler.domain.quality import recall_pm1, recall_sparse, spurious_share

RESULTS = Path(__file__).resolve().parent / "results" / "bench_capacity.json"
THETAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def dense_row(n: int, alpha: float, seed: int) -> dict[str, Any]:
    """All rules at one dense load."""
    d = planted_pm1(n, max(1, round(alpha * n)), seed=seed)
    idx = ConceptIndex.of_size(n)
    t = time.perf_counter()
    out = consolidate_states(ConceptGraph.empty(idx), d.episodes)
    seconds = time.perf_counter() - t
    merged = out.prototypes.states
    patterns = sp.csr_matrix(pm1_to_states(d.patterns))
    hebb = hebbian_graph(idx, d.episodes)
    row: dict[str, Any] = {
        "alpha": alpha,
        "patterns": int(d.patterns.shape[0]),
        "prototypes": out.prototypes.count,
        "consolidation": recall_pm1(out.graph, d.patterns).recall,
        "hebbian": recall_pm1(hebb, d.patterns).recall,
        "wake_sleep": recall_pm1(plain_wake_sleep(idx, d.episodes), d.patterns).recall,
        "hebbian_merged": recall_pm1(hebbian_graph(idx, merged), d.patterns).recall,
        "wake_sleep_merged": recall_pm1(plain_wake_sleep(idx, merged), d.patterns).recall,
        "spurious_share_hebbian": spurious_share(hebb, patterns),
        "spurious_share_consolidation": spurious_share(out.graph, patterns),
        "energy_delta": out.stats.energy_delta,
        "settle_loops": out.stats.settle_loops,
        "epochs": out.stats.epochs_run,
        "edges": out.graph.edge_count,
        "cycle_seconds": round(seconds, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def sparse_row(n: int, alpha: float, seed: int) -> dict[str, Any]:
    """Consolidation against the threshold-tuned covariance rule at one sparse load."""
    d = planted_sparse(n, max(1, round(alpha * n)), seed=seed)
    idx = ConceptIndex.of_size(n)
    t = time.perf_counter()
    out = consolidate_states(ConceptGraph.empty(idx), d.episodes)
    seconds = time.perf_counter() - t
    hebb = {
        th: recall_sparse(hebbian_graph(idx, d.episodes, th), d.patterns).recall for th in THETAS
    }
    best_theta = max(hebb, key=lambda th: hebb[th])
    row: dict[str, Any] = {
        "alpha": alpha,
        "patterns": int(d.patterns.shape[0]),
        "prototypes": out.prototypes.count,
        "consolidation": recall_sparse(out.graph, d.patterns).recall,
        "hebbian_covariance": hebb[best_theta],
        "hebbian_theta": best_theta,
        "spurious_share_consolidation": spurious_share(out.graph, d.patterns),
        "energy_delta": out.stats.energy_delta,
        "edges": out.graph.edge_count,
        "edges_all_pairs": n * (n - 1) // 2,
        "epochs": out.stats.epochs_run,
        "cycle_seconds": round(seconds, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def largest_load(rows: list[dict[str, Any]], key: str, bar: float = 0.95) -> float:
    """Largest load of an unbroken run from the smallest one at which ``key`` >= ``bar``."""
    best = 0.0
    for row in sorted(rows, key=lambda r: float(r["alpha"])):
        if float(row[key]) < bar:
            break
        best = float(row["alpha"])
    return best


def main() -> None:
    """Run the sweeps, write the JSON and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (N=200 / N=600)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_dense, n_sparse = (200, 600) if args.quick else (400, 2000)
    dense_loads = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    sparse_loads = (0.1, 0.25, 0.5, 0.75, 1.0)
    dense = [dense_row(n_dense, a, args.seed) for a in dense_loads]
    sparse = [sparse_row(n_sparse, a, args.seed) for a in sparse_loads]
    result = {
        "dense": {"n": n_dense, "rows": dense},
        "sparse": {
            "n": n_sparse,
            "rows": sparse,
            "largest_load_recall_095": {
                "consolidation": largest_load(sparse, "consolidation"),
                "hebbian_covariance": largest_load(sparse, "hebbian_covariance"),
            },
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
