"""Capacity through the service's own consolidation path, against peer rules on the same episodes.

For every load a fresh EpisodicVault (memory backend) and SleepScheduler run in this process on
free ports; the planted episodes go into the vault with PutEpisodes, one cycle runs with
StartConsolidation(wait=true), and the committed graph comes back with ReadGraph. Recall is then
measured on that graph exactly as the done-when says.

Dense: N = 400 random ±1 patterns at loads alpha = P/N in {0.05, 0.1, 0.2, 0.3, 0.4, 0.5}, each
seen only as 5 unlabelled episodes with 10% of the concepts flipped; a pattern is recalled when its
cue with 10% flipped settles (T = 0) to overlap >= 0.95. Peers on the same episodes: ``hebbian``
(covariance Hebbian), ``wake_sleep`` (the literal wake-sleep rule, domain/baselines.py) and
Hopfield-Feinstein-Palmer dreaming (random starts unlearned, domain/baselines.py) on the raw
episodes (``dreaming_raw``, eps 0.05: five rows per pattern) and on the merged prototypes
(``dreaming_merged``, eps 0.01), each stopped at its best recall over 3200 dreams (an oracle
stop that favours it: unsupervised, its recall collapses past the optimum). Also
the share of random starts ending in spurious attractors (consolidation vs Hebbian) and the
cycle's energy_delta.

Sparse: N = 2000 assemblies of 2-5% active concepts, 5 episodes each with 10% of the members
swapped; peer: the covariance Hebbian rule with its threshold tuned on the true recall (an oracle
that favours the baseline). Loads run in increasing order (``--sparse-loads``) until
consolidation recall falls below 0.95; reports the largest load at which recall stays >= 0.95.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_capacity.py [--quick]``; writes
bench/results/capacity.json (capacity_quick.json with --quick) and prints it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import scipy.sparse as sp

from mcp_services.common.config import load_config
from mcp_services.common.config_schema import Settings
from mcp_services.common.server import ServerThread
from mcp_services.episodic_vault.server import VaultService
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc
from mcp_services.sleep_scheduler.domain import ConceptGraph, ConceptIndex
from mcp_services.sleep_scheduler.domain.activations import pm1_to_states
from mcp_services.sleep_scheduler.domain.baselines import dreaming, hebbian_graph, plain_wake_sleep
from mcp_services.sleep_scheduler.domain.planted import planted_pm1, planted_sparse
from mcp_services.sleep_scheduler.domain.prototypes import merge_episodes
from mcp_services.sleep_scheduler.domain.quality import recall_pm1, recall_sparse, spurious_share
from mcp_services.sleep_scheduler.rpc.codec import stored_of_chunks
from mcp_services.sleep_scheduler.server import SleepSchedulerService

RESULTS = Path(__file__).resolve().parent / "results"
THETAS = (0.0, 0.25, 0.5, 0.75, 1.0)
PUT_BATCH = 2000


def _settings(var_dir: Path, **env: str) -> Settings:
    environ = {
        "TORI_ENV": "test",
        "TORI_VAR_DIR": str(var_dir),
        "VAULT_BACKEND": "memory",
        "SLEEP_PRESSURE_THRESHOLD": "0",
        # A synchronous cycle at a large load outlasts the default 5 min connection age.
        "GRPC_MAX_CONNECTION_AGE_MS": "0",
        **{
            k: "0"
            for k in (
                "VAULT_GRPC_PORT",
                "VAULT_METRICS_PORT",
                "SLEEP_GRPC_PORT",
                "SLEEP_METRICS_PORT",
            )
        },
        **env,
    }
    return load_config(environ=environ)


def consolidate_via_service(states: sp.csr_matrix) -> tuple[ConceptGraph, dict[str, Any]]:
    """Put ``states`` as episodes into a fresh vault, run one cycle, read the graph back.

    Returns the graph over ``concept:0 .. concept:{N-1}`` in order (concepts no episode showed
    get no edges and a negative bias: the service ignores unknown cue concepts) and the job.
    """
    n = states.shape[1]
    with tempfile.TemporaryDirectory() as tmp:
        vault = ServerThread(
            "episodic-vault", "episodic_vault", VaultService, _settings(Path(tmp))
        ).start()
        sched_settings = _settings(Path(tmp), VAULT_GRPC_PORT=str(vault.running.grpc_port))
        sched = ServerThread(
            "sleep-scheduler", "sleep_scheduler", SleepSchedulerService, sched_settings
        ).start()
        try:
            with (
                grpc.insecure_channel(f"127.0.0.1:{vault.running.grpc_port}") as vc,
                grpc.insecure_channel(f"127.0.0.1:{sched.running.grpc_port}") as sc,
            ):
                vstub = episodic_pb2_grpc.EpisodicVaultStub(vc)
                for start in range(0, states.shape[0], PUT_BATCH):
                    vstub.PutEpisodes(iter(_requests(states[start : start + PUT_BATCH])))
                stub = sleep_pb2_grpc.SleepSchedulerStub(sc)
                t = time.perf_counter()
                job = stub.StartConsolidation(
                    sleep_pb2.StartConsolidationRequest(wait=True, trigger="bench"), timeout=7200
                )
                seconds = time.perf_counter() - t
                if job.state != sleep_pb2.JOB_STATE_SUCCEEDED:
                    raise RuntimeError(f"consolidation failed: {job.error}")
                stored = stored_of_chunks(stub.ReadGraph(sleep_pb2.ReadGraphRequest()))
        finally:
            sched.stop()
            vault.stop()
    figures = {
        "episodes": job.episodes_processed,
        "prototypes": job.prototypes,
        "epochs": job.epochs_run,
        "energy_before": job.energy_before,
        "energy_after": job.energy_after,
        "energy_delta": job.energy_delta,
        "settle_loops": job.settle_loops,
        "stability_before": job.stability_before,
        "stability_after": job.stability_after,
        "edges": stored.meta.edge_count,
        "cycle_seconds": round(seconds, 2),
    }
    return _over_index(stored.graph, n), figures


def _requests(states: sp.csr_matrix) -> list[episodic_pb2.PutEpisodeRequest]:
    out = []
    for r in range(states.shape[0]):
        ids = [f"concept:{c}" for c in states.indices[states.indptr[r] : states.indptr[r + 1]]]
        act = episodic_pb2.ConceptActivation(concept_ids=ids, strengths=[1.0] * len(ids))
        ep = episodic_pb2.Episode(source=episodic_pb2.Source(type="bench"), activation=act)
        out.append(episodic_pb2.PutEpisodeRequest(episode=ep))
    return out


def _over_index(graph: ConceptGraph, n: int) -> ConceptGraph:
    ids = [f"concept:{i}" for i in range(n)]
    known = np.array([c in graph.index for c in ids])
    pos = graph.index.positions([c for c, k in zip(ids, known, strict=True) if k])
    sel = sp.csr_matrix((np.ones(len(pos)), (np.flatnonzero(known), pos)), shape=(n, graph.size))
    b = np.full(n, -1.0)
    b[known] = graph.biases[pos]
    return ConceptGraph(ConceptIndex.of_size(n), sp.csr_matrix(sel @ graph.weights @ sel.T), b)


def dense_row(n: int, alpha: float, seed: int) -> dict[str, Any]:
    """Consolidation through the service and the peers at one dense load."""
    d = planted_pm1(n, max(1, round(alpha * n)), seed=seed)
    idx = ConceptIndex.of_size(n)
    graph, job = consolidate_via_service(d.episodes)
    patterns = sp.csr_matrix(pm1_to_states(d.patterns))
    hebb = hebbian_graph(idx, d.episodes)
    row: dict[str, Any] = {
        "alpha": alpha,
        "patterns": int(d.patterns.shape[0]),
        "consolidation": recall_pm1(graph, d.patterns).recall,
        "hebbian": recall_pm1(hebb, d.patterns).recall,
        "wake_sleep": recall_pm1(plain_wake_sleep(idx, d.episodes), d.patterns).recall,
        **best_dreaming("dreaming_raw", idx, d.episodes, 0.05, d.patterns),
        **best_dreaming(
            "dreaming_merged", idx, merge_episodes(d.episodes).states, 0.01, d.patterns
        ),
        "spurious_share_hebbian": spurious_share(hebb, patterns),
        "spurious_share_consolidation": spurious_share(graph, patterns),
        **job,
    }
    print(json.dumps(row), flush=True)
    return row


def best_dreaming(
    name: str, idx: ConceptIndex, states: sp.csr_matrix, eps: float, patterns: np.ndarray
) -> dict[str, Any]:
    """Hopfield-Feinstein-Palmer dreaming stopped at its best recall (an oracle stop)."""
    best, at = 0.0, 0
    run = dreaming(idx, states, eps, 40, np.random.default_rng(0))
    for dreams, graph in itertools.islice(run, 80):
        if dreams % 80 == 0:
            r = recall_pm1(graph, patterns).recall
            best, at = (r, dreams) if r > best else (best, at)
    return {name: best, f"{name}_dreams": at}


def sparse_row(n: int, alpha: float, seed: int) -> dict[str, Any]:
    """Consolidation through the service against the threshold-tuned covariance rule."""
    d = planted_sparse(n, max(1, round(alpha * n)), seed=seed)
    idx = ConceptIndex.of_size(n)
    graph, job = consolidate_via_service(d.episodes)
    hebb = {
        th: recall_sparse(hebbian_graph(idx, d.episodes, th), d.patterns).recall for th in THETAS
    }
    best_theta = max(hebb, key=lambda th: hebb[th])
    row: dict[str, Any] = {
        "alpha": alpha,
        "patterns": int(d.patterns.shape[0]),
        "consolidation": recall_sparse(graph, d.patterns).recall,
        "hebbian_covariance": hebb[best_theta],
        "hebbian_theta": best_theta,
        "spurious_share_consolidation": spurious_share(graph, d.patterns),
        "edges_all_pairs": n * (n - 1) // 2,
        **job,
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
    parser.add_argument("--only", choices=("dense", "sparse"), help="run one of the two sweeps")
    parser.add_argument(
        "--sparse-loads",
        type=float,
        nargs="+",
        default=[0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0],
        help="sparse loads P/N, run in increasing order until consolidation recall < 0.95",
    )
    args = parser.parse_args()
    n_dense, n_sparse = (200, 600) if args.quick else (400, 2000)
    dense_loads = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    sparse_loads = sorted(args.sparse_loads)
    result: dict[str, Any] = {"path": "vault PutEpisodes -> StartConsolidation -> ReadGraph"}
    name = "capacity_quick" if args.quick else "capacity"
    if args.only:
        name += f"_{args.only}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    if args.only != "sparse":
        dense = [dense_row(n_dense, a, args.seed) for a in dense_loads]
        result["dense"] = {
            "n": n_dense,
            "rows": dense,
            "largest_load_recall_095": {
                k: largest_load(dense, k)
                for k in (
                    "consolidation",
                    "hebbian",
                    "wake_sleep",
                    "dreaming_raw",
                    "dreaming_merged",
                )
            },
        }
    if args.only != "dense":
        sparse: list[dict[str, Any]] = []
        for a in sparse_loads:
            sparse.append(sparse_row(n_sparse, a, args.seed))
            result["sparse"] = {
                "n": n_sparse,
                "rows": sparse,
                "largest_load_recall_095": {
                    "consolidation": largest_load(sparse, "consolidation"),
                    "hebbian_covariance": largest_load(sparse, "hebbian_covariance"),
                },
            }
            # Written after every load: a large load can take long on a shared machine.
            out.write_text(json.dumps({**result, "partial": True}, indent=2))
            if sparse[-1]["consolidation"] < 0.95:
                break  # the largest load is found; larger ones only cost time
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
