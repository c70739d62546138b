"""How much of a consolidated graph the SparsePruner removes while the memory stays.

For each load ``alpha`` it plants ``alpha N`` random +-1 patterns over ``N`` concepts, shows each
only as 5 unlabelled episodes with 10% of its concepts flipped, consolidates them with the
SleepScheduler's own cycle (``consolidate_states``, what StartConsolidation runs), and prunes the
result with the pruner's default run behind its guard (``plan_pruning`` on the merged prototypes,
what TriggerPruning runs). Recall is judged against the planted patterns, which neither service
sees: the share of 10%-flipped cues that settle (T = 0) to overlap >= 0.95.

Beside it, in the same run, the baselines an operator would otherwise use at the same number of
edges: magnitude pruning with the survivors kept as they are (hard threshold) and with every weight
shrunk by the cut (soft threshold, one proximal L1 step on |W|). Figures go to
bench/results/prune_memory.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_prune_memory.py [--n 400]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcp_services.sparse_pruner.domain import (  # noqa: E402
    ConceptGraph,
    assess_quality,
    make_graph,
    plan_pruning,
)
from mcp_services.sparse_pruner.domain.objective import soft_threshold  # noqa: E402
from tests.sparse_pruner.planted import consolidated  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LOADS = (0.05, 0.1, 0.2, 0.3)


def magnitude_pruned(graph: ConceptGraph, keep: int, shrink: bool) -> ConceptGraph:
    """``graph`` with only its ``keep`` largest-|w| edges: kept as they are (hard threshold) or
    all shrunk by the cut value (soft threshold, one proximal L1 step on |W|)."""
    data = np.sort(np.abs(graph.weights.data))[::-1]
    if 2 * keep >= data.size:
        return graph
    cut = float(data[2 * keep])  # W holds each edge twice
    kept = graph.weights.copy()
    if shrink:
        kept.data = soft_threshold(kept.data, cut)
    else:
        kept.data[np.abs(kept.data) <= cut] = 0.0
    kept.eliminate_zeros()
    return make_graph(sp.csr_matrix(kept), graph.biases)


def row(n: int, alpha: float, seed: int) -> dict[str, Any]:
    """Consolidate, prune and measure at one load."""
    t = time.perf_counter()
    c = consolidated(n, alpha, seed)
    consolidate_s = time.perf_counter() - t
    graph, truth = c.graph, c.truth
    t = time.perf_counter()
    plan = plan_pruning(graph, c.prototypes)
    prune_s = time.perf_counter() - t
    before = assess_quality(graph, truth).recall
    after = assess_quality(plan.graph, truth).recall
    keep = plan.graph.n_edges
    hard = assess_quality(magnitude_pruned(graph, keep, shrink=False), truth).recall
    soft = assess_quality(magnitude_pruned(graph, keep, shrink=True), truth).recall
    out_row = {
        "alpha": alpha,
        "patterns": int(truth.shape[0]),
        "edges_consolidated": graph.n_edges,
        "edges_pruned_graph": plan.graph.n_edges,
        "pruned_fraction": round(plan.pruned_fraction, 4),
        "accepted": plan.accepted,
        "tau_used": plan.tau_used,
        "recall_before": before,
        "recall_after": after,
        "recall_drop": round(before - after, 4),
        "recall_magnitude_hard_same_edges": hard,
        "recall_magnitude_soft_same_edges": soft,
        "consolidate_seconds": round(consolidate_s, 2),
        "prune_seconds": round(prune_s, 2),
    }
    print(json.dumps(out_row), flush=True)
    return out_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [row(args.n, a, args.seed) for a in LOADS]
    result = {
        "what": __doc__.splitlines()[0],
        "command": "OMP_NUM_THREADS=1 python bench/bench_prune_memory.py " + " ".join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cores": 2},
        "n": args.n,
        "bars": {
            "alpha_0.1": "pruned_fraction >= 0.80 and recall_after >= 0.95",
            "alpha_0.2": "pruned_fraction >= 0.50 and recall_drop <= 0.05",
        },
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prune_memory.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
