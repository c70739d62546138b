"""Cost of one consolidation cycle as the number of episodes grows.

Episodes of 20 active concepts over 10k concepts: planted assemblies of 20 concepts, each seen
as 5 episodes with 2 of its members swapped (so 1k episodes = 200 assemblies). Each size runs the
service's cycle (:func:`mcp_services.sleep_scheduler.cycle.run_cycle`, what a consolidation job
runs on its worker thread) from an empty graph with the service's default config, stopping rule
included (``--epochs N`` caps the epochs instead), and reports wall time, the time of one sleep
epoch (median over epochs not followed by a stability evaluation), the time of the merge step
alone, epochs run and kept, edges, the label-free stability before and after, and the fitted
growth exponents against episodes (1.0 = linear). The peer in the same run is the one-pass sparse
co-activation count ``X^T X`` of the same episodes (the floor of any rule that touches the
co-active pairs). The compiled kernels are warmed up on a tiny cycle first. CPU seconds are
reported beside wall seconds because the machine is shared (the load average is recorded).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cycle.py`` (1k, 10k, 100k episodes;
``--sizes 1000 10000`` for fewer); writes bench/results/cycle.json and prints it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from mcp_services.sleep_scheduler.cycle import run_cycle
from mcp_services.sleep_scheduler.domain import ConceptActivation, ConsolidationConfig
from mcp_services.sleep_scheduler.domain.planted import planted_sparse
from mcp_services.sleep_scheduler.domain.prototypes import merge_episodes
from mcp_services.sleep_scheduler.graph_store import StoredGraph

RESULTS = Path(__file__).resolve().parent / "results" / "cycle.json"
CONCEPTS = 10_000
ACTIVE = 20
COPIES = 5


def run_size(episodes: int, epochs: int | None, seed: int) -> dict[str, Any]:
    """One cycle over ``episodes`` planted episodes; returns its figures."""
    frac = ACTIVE / CONCEPTS
    data = planted_sparse(
        CONCEPTS, episodes // COPIES, activity=(frac, frac), copies=COPIES, seed=seed
    )
    eps = data.episodes
    acts = [
        ConceptActivation.of_active(
            [f"c{c}" for c in eps.indices[eps.indptr[r] : eps.indptr[r + 1]]]
        )
        for r in range(eps.shape[0])
    ]
    t = time.perf_counter()
    co = sp.csr_matrix(eps.T @ eps)
    peer_s = time.perf_counter() - t
    t = time.perf_counter()
    protos = merge_episodes(eps)
    merge_s = time.perf_counter() - t
    cfg = ConsolidationConfig(seed=seed)
    if epochs is not None:
        cfg = replace(cfg, max_epochs=epochs)
    stamps: list[tuple[float, float]] = []

    def stamp(*_: object) -> None:
        stamps.append((time.perf_counter(), time.process_time()))

    t, c = time.perf_counter(), time.process_time()
    out = run_cycle(StoredGraph.empty(), acts, cfg, stamp)
    cycle_s, cycle_cpu = time.perf_counter() - t, time.process_time() - c
    # A gap between two epoch ends holds one epoch, plus the evaluation after an eval epoch.
    gaps = [
        (b[0] - a[0], b[1] - a[1])
        for k, (a, b) in enumerate(itertools.pairwise(stamps), 1)
        if k % cfg.eval_every
    ]
    row: dict[str, Any] = {
        "episodes": episodes,
        "prototypes": out.stats.prototypes,
        "prototypes_expected": episodes // COPIES,
        "peer_coactivation_seconds": round(peer_s, 4),
        "peer_coactivation_pairs": int((co.nnz - co.shape[0]) // 2),
        "merge_seconds": round(merge_s, 3),
        "cycle_seconds": round(cycle_s, 3),
        "cycle_cpu_seconds": round(cycle_cpu, 3),
        "seconds_per_epoch_all_in": round(cycle_s / max(out.stats.epochs_run, 1), 4),
        "sleep_epoch_seconds": round(float(np.median([g[0] for g in gaps])), 4) if gaps else None,
        "sleep_epoch_cpu_seconds": (
            round(float(np.median([g[1] for g in gaps])), 4) if gaps else None
        ),
        "epochs": out.stats.epochs_run,
        "epochs_cap": cfg.max_epochs,
        "epoch_kept": out.stats.epoch_kept,
        "edges": out.graph.edge_count,
        "energy_delta": out.stats.energy_delta,
        "settle_loops": out.stats.settle_loops,
        "stability_before": out.stats.stability_before.recall,
        "stability_after": out.stats.stability_after.recall,
        "stability_overlap_after": round(out.stats.stability_after.mean_overlap, 4),
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--epochs", type=int, default=None, help="cap (default: stopping rule)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    run_size(50, 5, args.seed)  # compile (or load) the kernels outside the timed runs
    rows = [run_size(n, args.epochs, args.seed) for n in args.sizes]
    result = {
        "concepts": CONCEPTS,
        "active_per_episode": ACTIVE,
        "epochs_cap": args.epochs,
        "load_average_1m_at_start": load_start,
        "load_average_1m_at_end": os.getloadavg()[0],
        "rows": rows,
        "growth_exponent_cycle": growth_exponent(rows, "cycle_seconds"),
        "growth_exponent_cycle_cpu": growth_exponent(rows, "cycle_cpu_seconds"),
        "growth_exponent_sleep_epoch_cpu": growth_exponent(rows, "sleep_epoch_cpu_seconds"),
        "growth_exponent_merge": growth_exponent(rows, "merge_seconds"),
        "growth_exponent_peer": growth_exponent(rows, "peer_coactivation_seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
