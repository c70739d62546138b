"""Backup then restore at scale gives the same fleet: 100k episodes plus graphs and learner state.

An original fleet's data (no service running, each on its own free ports so no fleet on this
machine answers for it) is made where the services keep it:

- the vault: N episodes (default 100k; 20 concepts, a 384-d embedding and 256 B payload each, a
  fifth consolidated) in SQLite, written as bench_transfer.py does, then its vector index built
  and saved by the vault's own store (what a vault leaves behind when it stops);
- the scheduler: graph versions over the episodes' concepts, committed through the graph store
  (a growing concept index, sparse weights, prototypes);
- the learner: a real learner fitted on oscillator traces over some of those concepts, saved by
  its state store with its cursor at the vault's last seq.

Then, as an operator would (subprocesses): `tori-ops backup`, `tori-ops restore` into a second,
empty var dir, and `tori-ops verify-consistency` twice: vault against vault (ids, content hashes,
consolidation state, counters), and `--services --json` on each fleet, whose fingerprints (counts
and content digests of the vault, of every graph version and of the learner state) must be
identical and each fleet consistent. The restored vault has no index (a backup leaves it out);
the vault's store rebuilds it as at start and the restored fleet is verified again with its
index. The peer: a plain recursive copy of the original var dir (no consistency, no checksums),
the floor of what copying the bytes costs (each tori-ops call also pays its start-up, measured
alone as tori_ops_startup_s). Figures go to bench/results/backup.json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_backup.py [--episodes 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_transfer import fill, ops  # noqa: E402

from mcp_services.common.config import load_config  # noqa: E402
from mcp_services.episodic_vault.adapters.storage import (  # noqa: E402
    index_dir,
    open_backend,
    store_identity,
    write_gate,
)
from mcp_services.episodic_vault.domain.store import TieredStore  # noqa: E402
from mcp_services.koopman_learner.adapters import state_store  # noqa: E402
from mcp_services.koopman_learner.domain.learner import Learner  # noqa: E402
from mcp_services.koopman_learner.domain.synthetic import oscillator_system, simulate  # noqa: E402
from mcp_services.koopman_learner.domain.traces import Trace  # noqa: E402
from mcp_services.koopman_learner.server import data_dir  # noqa: E402
from mcp_services.sleep_scheduler.adapters.graph_store import GraphStore  # noqa: E402
from mcp_services.sleep_scheduler.domain.concept_index import ConceptIndex  # noqa: E402
from mcp_services.sleep_scheduler.domain.graph import ConceptGraph  # noqa: E402
from mcp_services.sleep_scheduler.server import graph_dir  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "backup.json"
PORT_VARS = [
    "VAULT_GRPC_PORT", "VAULT_METRICS_PORT", "SLEEP_GRPC_PORT", "SLEEP_METRICS_PORT",
    "PRUNER_GRPC_PORT", "PRUNER_METRICS_PORT", "KOOPMAN_GRPC_PORT", "KOOPMAN_METRICS_PORT",
    "GATEWAY_PORT", "GATEWAY_METRICS_PORT",
]  # fmt: skip
GRAPH_VERSIONS = 5
LEARNER_CONCEPTS = [f"c{i}" for i in range(12)]


def fleet_env(var_dir: Path) -> dict[str, str]:
    """Our environment for a fleet under var_dir, on ports nobody listens on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORI_", "VAULT_", "KCL_"))}
    env.update({"TORI_ENV": "local", "TORI_VAR_DIR": str(var_dir)})
    socks = [socket.socket() for _ in PORT_VARS]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    env.update({var: str(s.getsockname()[1]) for var, s in zip(PORT_VARS, socks, strict=True)})
    for s in socks:
        s.close()
    return env


def build_index(env: dict[str, str]) -> float:
    """What the vault does at start and stop: build the vector index and save it."""
    cfg = load_config(environ=env).vault
    var_dir = env["TORI_VAR_DIR"]
    start = time.perf_counter()
    store = TieredStore(
        cfg,
        open_backend(cfg),
        index_dir(cfg, var_dir),
        store_identity(cfg),
        write_gate=write_gate(cfg),
    )
    store.open()
    store.close()
    return time.perf_counter() - start


def make_graphs(env: dict[str, str], n_concepts: int) -> int:
    """GRAPH_VERSIONS versions, each adding concepts and edges (sparse, symmetric)."""
    settings = load_config(environ=env)
    store = GraphStore(Path(graph_dir(settings)), keep=settings.sleep_scheduler.keep_versions)
    rng = np.random.default_rng(1)
    edges = 0
    for v in range(1, GRAPH_VERSIONS + 1):
        n = n_concepts * v // GRAPH_VERSIONS
        index = ConceptIndex(tuple(f"c{i}" for i in range(n)))
        m = 5 * n
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        keep = i < j
        upper = sp.coo_matrix((rng.normal(0, 0.1, keep.sum()), (i[keep], j[keep])), (n, n))
        w = sp.csr_matrix(upper + upper.T)
        protos = sp.csr_matrix(
            (np.ones(20 * 50), rng.integers(0, n, 20 * 50), np.arange(0, 20 * 51, 20)), (50, n)
        )
        protos.sum_duplicates()
        protos.data[:] = 1.0
        stored = store.commit(
            v - 1, ConceptGraph(index, w, rng.normal(0, 0.1, n)), protos, None, "bench"
        )
        edges = stored.graph.edge_count
    return edges


def make_learner(env: dict[str, str], last_seq: int) -> int:
    """A learner fitted on oscillator traces over LEARNER_CONCEPTS, saved where it keeps it."""
    settings = load_config(environ=env)
    cfg = settings.koopman_learner
    learner = Learner(cfg, stream_max_gap_s=cfg.stream_max_gap_s)
    system = oscillator_system(len(LEARNER_CONCEPTS), [0.4, 1.1], [-0.05, -0.1], cfg.dt_s, seed=2)
    traces = [
        Trace(tuple(LEARNER_CONCEPTS), values, None)
        for values in simulate(system, n_traces=20, length=80, seed=3, offset=0.5)
    ]
    learner.process_traces(traces, force_refit=True)
    learner.cursor = last_seq
    path = Path(data_dir(settings)) / state_store.FILE_NAME
    state_store.save(path, learner)
    return path.stat().st_size


def services_report(env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    seconds, out = ops("verify-consistency", "--services", "--json", env=env)
    report: dict[str, Any] = json.loads(out)
    return seconds, report


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=100_000)
    args = parser.parse_args()
    n = args.episodes
    with tempfile.TemporaryDirectory() as tmp:
        original, restored, backup = Path(tmp) / "orig", Path(tmp) / "restored", Path(tmp) / "bk"
        env_o, env_r = fleet_env(original), fleet_env(restored)
        db_o = original / "data" / "vault.db"
        fill_s = fill(f"sqlite:path={db_o}", n)
        print(f"filled {n} episodes in {fill_s:.1f} s")
        index_s = build_index(env_o)
        print(f"vector index built and saved in {index_s:.1f} s")
        edges = make_graphs(env_o, 10_000)
        learner_bytes = make_learner(env_o, n)
        print(f"{GRAPH_VERSIONS} graph versions ({edges} edges in the latest), learner state")
        verify_o_s, report_o = services_report(env_o)
        print("original:", report_o["consistent"], report_o["diffs"])

        backup_s, out = ops("backup", "--out", str(backup), env=env_o)
        print(out)
        restore_s, out = ops("restore", "--from", str(backup), env=env_r)
        print(out)
        verify_vault_s, vault_out = ops(
            "verify-consistency", "--backend", f"sqlite:path={db_o}",
            "--against", f"sqlite:path={restored / 'data' / 'vault.db'}", env=env_o,
        )  # fmt: skip
        print(vault_out)
        _, report_r = services_report(env_r)
        print("restored:", report_r["consistent"], report_r["diffs"], report_r["notes"])
        reindex_s = build_index(env_r)
        _, report_r2 = services_report(env_r)
        print("restored, index rebuilt:", report_r2["consistent"], report_r2["diffs"])

        # What every tori-ops call pays before it starts working (imports, config).
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mcp_services.ops"], capture_output=True, env=env_o)
        startup_s = time.perf_counter() - start
        peer = Path(tmp) / "copy"
        start = time.perf_counter()
        shutil.copytree(original, peer)
        copy_s = time.perf_counter() - start
        fp_o, fp_r = report_o["fingerprint"], report_r2["fingerprint"]
        figures = {
            "episodes": n,
            "graph_versions": GRAPH_VERSIONS,
            "graph_edges_latest": edges,
            "learner_state_bytes": learner_bytes,
            "original_bytes": tree_bytes(original),
            "backup_bytes": tree_bytes(backup),
            "fill_s": round(fill_s, 2),
            "index_build_s": round(index_s, 2),
            "backup_s": round(backup_s, 2),
            "restore_s": round(restore_s, 2),
            "verify_vault_vs_vault_s": round(verify_vault_s, 2),
            "verify_services_s": round(verify_o_s, 2),
            "index_rebuild_after_restore_s": round(reindex_s, 2),
            "vault_vs_vault_consistent": vault_out.endswith("\nconsistent"),
            "original_consistent": report_o["consistent"],
            "restored_consistent": report_r["consistent"],
            "restored_consistent_with_index": report_r2["consistent"],
            "fingerprints_identical": fp_o == fp_r,
            "fingerprint": fp_o,
            "tori_ops_startup_s": round(startup_s, 2),
            "peer_plain_copy_s": round(copy_s, 2),
            "backup_vs_plain_copy": round(backup_s / copy_s, 1),
        }
    print(json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    if not (figures["fingerprints_identical"] and figures["vault_vs_vault_consistent"]):
        raise SystemExit("the restored fleet differs from the original")


if __name__ == "__main__":
    main()
