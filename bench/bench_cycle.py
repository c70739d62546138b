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

Linearity: ``touched_entries_per_epoch`` is the work an epoch cannot avoid (for every replayed
prototype, the support degrees of its concepts: each replay walks those rows of the graph), and
``sleep_epoch_cpu_ns_per_touched_entry`` the epoch's CPU time over it; a flat figure across sizes
means an epoch is linear in replays and the edges they touch (with a fixed 10k concepts the
degrees grow with the episodes, so the touched entries grow faster than the episodes).

Peers in the same run: ``--peer DIR`` (repeatable) names another source tree of the project
(e.g. a git worktree of an earlier commit: ``git worktree add /tmp/old88 88479ef``). Each size
then runs again right after this tree's run, once per peer, in a child process importing
``mcp_services`` from DIR, with the same data, seed and config, so all are measured in the same
conditions; the result holds each peer's rows, growth exponents and commit, and each row its CPU
ratio to every peer. Each row names the tree its code came from (``code``).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cycle.py`` (1k, 10k, 100k episodes;
``--sizes 1000 10000`` for fewer); writes bench/results/cycle.json and prints it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

import mcp_services
from mcp_services.sleep_scheduler.cycle import run_cycle
from mcp_services.sleep_scheduler.domain import ConceptActivation, ConsolidationConfig
from mcp_services.sleep_scheduler.domain.planted import planted_sparse
from mcp_services.sleep_scheduler.domain.prototypes import merge_episodes

try:
    from mcp_services.sleep_scheduler.adapters.graph_store import StoredGraph
except ImportError:  # a --peer tree from before the scheduler's adapters/ layout (f3af69d)
    from mcp_services.sleep_scheduler.graph_store import (  # type: ignore[import-not-found,no-redef]
        StoredGraph,
    )

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
    # Each replay walks the graph rows of its concepts: the sum of their degrees over replays.
    touched = int(np.diff(out.graph.weights.indptr)[out.prototypes.indices].sum())
    row: dict[str, Any] = {
        "episodes": episodes,
        "code": str(Path(mcp_services.__file__).resolve().parent.parent),
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
        "touched_entries_per_epoch": touched,
        "sleep_epoch_cpu_ns_per_touched_entry": (
            round(1e9 * float(np.median([g[1] for g in gaps])) / max(touched, 1), 2)
            if gaps
            else None
        ),
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


def exponents(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Growth exponents against episodes of the timed figures (and of the touched entries)."""
    keys = {
        "cycle": "cycle_seconds",
        "cycle_cpu": "cycle_cpu_seconds",
        "sleep_epoch_cpu": "sleep_epoch_cpu_seconds",
        "merge": "merge_seconds",
        "peer": "peer_coactivation_seconds",
        "touched_entries": "touched_entries_per_epoch",
    }
    return {
        f"growth_exponent_{name}": growth_exponent(rows, key)
        for name, key in keys.items()
        if all(r.get(key) is not None for r in rows)
    }


def git_commit(tree: Path) -> str:
    """The commit checked out in ``tree`` ('+ changes' when its tracked files differ)."""

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tree), *cmd], capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" + changes" if dirty else "")


def peer_row(tree: Path, episodes: int, epochs: int | None, seed: int) -> dict[str, Any]:
    """The row of one size measured by this script in a child importing ``tree``'s code."""
    cmd = [sys.executable, __file__, "--rows-only", "--sizes", str(episodes), "--seed", str(seed)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tree)
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if row["episodes"] != episodes or Path(row["code"]) != tree:
        raise RuntimeError(f"peer in {tree} printed no row of its own for {episodes} episodes")
    return row


def main() -> None:
    """Run the sizes (each beside the peer's, with --peer), write the JSON and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--epochs", type=int, default=None, help="cap (default: stopping rule)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--peer", type=Path, action="append", default=[], help="source tree to compare against"
    )
    parser.add_argument("--rows-only", action="store_true", help="print rows, write nothing")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    commit = git_commit(Path(__file__).resolve().parent.parent)  # the code the run starts with
    run_size(50, 5, args.seed)  # compile (or load) the kernels outside the timed runs
    rows: list[dict[str, Any]] = []
    peer_rows: list[list[dict[str, Any]]] = [[] for _ in args.peer]
    for n in args.sizes:
        rows.append(run_size(n, args.epochs, args.seed))
        for tree, theirs in zip(args.peer, peer_rows, strict=True):
            theirs.append(peer_row(tree.resolve(), n, args.epochs, args.seed))
            rows[-1].setdefault("cycle_cpu_vs_peer", {})[git_commit(tree)] = round(
                rows[-1]["cycle_cpu_seconds"] / max(theirs[-1]["cycle_cpu_seconds"], 1e-9), 3
            )
    if args.rows_only:
        return
    result: dict[str, Any] = {
        "concepts": CONCEPTS,
        "active_per_episode": ACTIVE,
        "epochs_cap": args.epochs,
        "commit": commit,
        "command": " ".join(
            ["OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cycle.py", *sys.argv[1:]]
        ),
        "load_average_1m_at_start": load_start,
        "load_average_1m_at_end": os.getloadavg()[0],
        "rows": rows,
        **exponents(rows),
    }
    if args.peer:
        result["peers"] = [
            {"tree": str(tree), "commit": git_commit(tree), "rows": theirs, **exponents(theirs)}
            for tree, theirs in zip(args.peer, peer_rows, strict=True)
        ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
