"""Vault at scale, per backend: put throughput (unary and batched), how long the HNSW index takes
to hold every vector, Search recall@10 against exact brute force (numpy, same vectors), Search
latency in process and over gRPC, and what a stored episode costs in the vault process's RSS.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_vault_search.py \
        [--n 100000] [--unary 5000] [--queries 200] [--backends sqlite memory redis postgres]

Embeddings are 384-d, drawn around 2000 cluster centres (unit centre + gaussian noise of the same
norm), which is how real sentence embeddings sit, rather than isotropic noise, on which no ANN
index is meaningful. Queries are fresh points from the same clusters. The vault runs in this
process (ServerThread, its own event loop); the gRPC client is a plain channel to its port, so
client and server share the interpreter. Unary puts are timed on a subset (the first --unary
episodes, one call each); the rest of the n episodes are loaded by streamed batches (--batch).
HNSW insertion happens in the vault's background indexer while puts go on (staged vectors are
searchable exactly meanwhile): "index_build_s" runs from the first batched put until the index
held every vector, "index_ready_after_last_put_s" from the last acknowledgement. The peer for
the build is faiss itself: the same vectors added to a bare IndexHNSWFlat with the same M and
efConstruction, in batches, in this process before the backends run (--no-faiss-peer skips it).

Each backend's figures are merged into bench/results/vault_search.json by backend name (a run
with other n/dim starts the file afresh), so backends can be run one at a time. The machine is
shared: process CPU seconds and the load average are recorded beside the wall-clock figures.
Redis and PostgreSQL are the servers at 127.0.0.1:6379 and :5432 (own key prefix / schema,
removed afterwards).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcp_services.common.config import load_config  # noqa: E402
from mcp_services.common.server import ServerThread  # noqa: E402
from mcp_services.episodic_vault.domain.model import EpisodeFilter, Tier  # noqa: E402
from mcp_services.episodic_vault.server import VaultService  # noqa: E402
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb  # noqa: E402
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc  # noqa: E402
from tests.conftest import service_environ  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "vault_search.json"
DIM = 384
REDIS_URL = "redis://127.0.0.1:6379/0"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def dataset(n: int, queries: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        c = centres[rng.integers(0, len(centres), m)]
        x = c + rng.normal(scale=1 / np.sqrt(DIM), size=(m, DIM)).astype(np.float32)
        return x.astype(np.float32)

    return draw(n), draw(queries)


def episode(i: int, vec: np.ndarray, run: str) -> pb.Episode:
    ep = pb.Episode(
        id=f"b{run}-{i:07d}",
        tags=["bench"],
        source=pb.Source(type="bench"),
        energy=float(i % 10),
        activation=pb.ConceptActivation(
            concept_ids=[f"concept:{(i * 7 + k) % 5000}" for k in range(8)],
            strengths=[0.9 - 0.1 * k for k in range(8)],
        ),
        embedding=vec.tolist(),
    )
    ep.timestamp.FromMilliseconds(1_700_000_000_000 + i)
    return ep


def pct(xs: list[float]) -> dict[str, float]:
    ms = np.array(xs) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
    }


def vault_overrides(backend: str, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    v: dict[str, Any] = {
        "backend": backend,
        "embedding_dim": DIM,
        "tiers": {"stm": {"capacity": 10_000}},
    }
    if args.ef_construction:
        v["index"] = {"ef_construction": args.ef_construction}
    if backend == "redis":
        v["redis"] = {"url": REDIS_URL, "key_prefix": f"bench-{tag}:", "socket_timeout_s": 60}
    if backend == "postgres":
        v["postgres"] = {"dsn": PG_DSN, "schema_name": f"bench_{tag}"}
    return v


def cleanup(backend: str, tag: str) -> None:
    if backend == "redis":
        with redis.Redis.from_url(REDIS_URL) as r:
            for key in r.scan_iter(match=f"bench-{tag}:*", count=1000):
                r.delete(key)
    if backend == "postgres":
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "bench_{tag}" CASCADE')


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def git_commit() -> str:
    """HEAD, with "+dirty" when the vault's code differs from it."""
    run = ["git", "-C", str(ROOT)]
    head = subprocess.run([*run, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*run, "diff", "--quiet", "HEAD", "--", "mcp_services/episodic_vault"], check=False
    )
    return head.stdout.strip() + ("+dirty" if dirty.returncode else "")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def faiss_peer(data: np.ndarray, m: int, ef_construction: int, batch: int) -> dict[str, Any]:
    """The same vectors into a bare faiss IndexHNSWFlat (inner product on unit vectors)."""
    unit = np.ascontiguousarray(data / np.linalg.norm(data, axis=1, keepdims=True))
    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(DIM, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    w0, c0, load0 = time.perf_counter(), time.process_time(), load_average()
    for start in range(0, len(unit), batch):
        index.add(unit[start : start + batch])
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "what": "faiss IndexHNSWFlat.add of the same unit vectors, 1 thread, batches of "
        f"{batch}, no vault",
        "build_s": round(wall, 1),
        "build_cpu_s": round(cpu, 1),
        "vectors_per_cpu_s": round(len(unit) / cpu, 1),
        "load_average": [load0, load_average()],
    }


def run_backend(
    backend: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {
        "backend": backend,
        "commit": git_commit(),
        "load_average_start": load_average(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = service_environ(Path(tmp) / "var")
        settings = load_config(
            environ=env, overrides={"vault": vault_overrides(backend, tag, args)}
        )
        idx_cfg = settings.vault.index
        out["hnsw"] = {
            "m": idx_cfg.hnsw_m,
            "ef_construction": idx_cfg.ef_construction,
            "ef_search": idx_cfg.ef_search,
            "threads": idx_cfg.threads,
        }
        held: list[VaultService] = []

        def factory(ctx: Any) -> VaultService:
            held.append(VaultService(ctx))
            return held[-1]

        gc.collect()
        rss0 = rss_bytes()
        server = ServerThread("episodic-vault", "episodic_vault", factory, settings).start()
        channel = grpc.insecure_channel(
            f"127.0.0.1:{server.running.grpc_port}",
            options=[("grpc.max_receive_message_length", 64 << 20)],
        )
        stub = episodic_pb2_grpc.EpisodicVaultStub(channel)
        try:
            n = len(data)
            store = held[0]._backend
            assert store is not None and store.index is not None
            # Unary puts on a subset (the first ids), one call each.
            lat: list[float] = []
            t0 = time.perf_counter()
            for i in range(args.unary):
                s = time.perf_counter()
                stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(i, data[i], tag)))
                lat.append(time.perf_counter() - s)
            unary_s = time.perf_counter() - t0
            out["put_unary"] = {
                "ops": args.unary,
                "per_s": round(args.unary / unary_s, 1),
            } | pct(lat)
            # Let the indexer catch up, so the batched load starts from an indexed vault.
            while store.index.sizes()["pending"] > 0:
                time.sleep(0.05)
            # The rest in streamed batches.
            t0, c0 = time.perf_counter(), time.process_time()
            for start in range(args.unary, n, args.batch):
                stop = min(n, start + args.batch)
                stub.PutEpisodes(
                    iter(
                        pb.PutEpisodeRequest(episode=episode(i, data[i], tag))
                        for i in range(start, stop)
                    )
                )
            t_acked = time.perf_counter()
            batch_s = t_acked - t0
            out["put_batched"] = {
                "ops": n - args.unary,
                "batch": args.batch,
                "per_s": round((n - args.unary) / batch_s, 1),
                "pending_at_last_ack": store.index.sizes()["pending"],
            }
            while store.index.sizes()["pending"] > 0:
                time.sleep(0.05)
            t_ready = time.perf_counter()
            out["index_build_s"] = round(t_ready - t0, 1)
            out["index_ready_after_last_put_s"] = round(t_ready - t_acked, 1)
            out["load_cpu_s"] = round(time.process_time() - c0, 1)
            gc.collect()
            rss = rss_bytes() - rss0
            out["rss_mb"] = round(rss / 2**20, 1)
            out["rss_bytes_per_episode"] = round(rss / n)
            # Search in process (the store, no gRPC) and over gRPC; recall@10 vs brute force.
            found = 0
            lat_in: list[float] = []
            for qi, q in enumerate(queries):
                s = time.perf_counter()
                hits, _, _ = store.search(q.tolist(), 10, EpisodeFilter(), Tier.UNSPECIFIED)
                lat_in.append(time.perf_counter() - s)
                got = {int(h.episode.id.rsplit("-", 1)[1]) for h in hits}
                found += len(got & set(truth[qi].tolist()))
            out["recall_at_10"] = round(found / (10 * len(queries)), 4)
            out["search_in_process"] = pct(lat_in)
            lat_grpc: list[float] = []
            for q in queries:
                s = time.perf_counter()
                stub.Search(pb.SearchRequest(embedding=q.tolist(), k=10, omit_bodies=True))
                lat_grpc.append(time.perf_counter() - s)
            out["search_grpc"] = pct(lat_grpc)
            stats = stub.GetStats(pb.GetStatsRequest())
            out["episodes"] = stats.episode_count
            out["load_average_end"] = load_average()
        finally:
            channel.close()
            server.stop()
            cleanup(backend, tag)
    print(json.dumps(out), flush=True)
    return out


def load_report(args: argparse.Namespace) -> dict[str, Any]:
    """The results file as it stands when it is for the same n and dim, else a fresh one."""
    try:
        old = json.loads(args.out.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("n") == args.n and old.get("dim") == DIM and "commands" in old:
        return {k: old[k] for k in ("results", "commands", "faiss_peer", "notes") if k in old}
    return {"results": []}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--unary", type=int, default=5000, help="unary puts, timed (a subset of n)")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument(
        "--backends",
        "--backend",
        nargs="+",
        default=["sqlite", "memory", "redis", "postgres"],
        choices=["sqlite", "memory", "redis", "postgres"],
    )
    ap.add_argument("--ef-construction", type=int, default=0, help="default: the config's")
    ap.add_argument("--no-faiss-peer", action="store_true", help="skip the bare-faiss build")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    data, queries = dataset(args.n, args.queries)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    t0 = time.perf_counter()
    truth = np.argsort(-(qn @ unit.T), axis=1)[:, :10]
    brute_s = (time.perf_counter() - t0) / len(queries)
    report = load_report(args)
    report |= {
        "bench": "vault_search",
        "n": args.n,
        "dim": DIM,
        "queries": args.queries,
        "method": "unary puts are timed on the first --unary episodes; the remaining n - unary "
        "are loaded by streamed batched puts (PutEpisodes, --batch per call), whose throughput "
        "is reported; the index builds in the background meanwhile",
        "baseline_brute_force_numpy_ms_per_query": round(brute_s * 1000, 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    report.setdefault("commands", {})
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/bench_vault_search.py " + " ".join(
        sys.argv[1:]
    )
    if not args.no_faiss_peer:
        cfg = load_config(
            environ=service_environ(Path(tempfile.gettempdir()) / "unused"),
            overrides={"vault": vault_overrides("sqlite", "peer", args)},
        ).vault.index
        report["faiss_peer"] = faiss_peer(data, cfg.hnsw_m, cfg.ef_construction, 128)
        print(json.dumps(report["faiss_peer"]), flush=True)
    # Written after every backend, so a run cut short keeps what it measured.
    for b in args.backends:
        result = run_backend(b, data, queries, truth, args)
        report["results"] = [r for r in report["results"] if r["backend"] != b] + [result]
        report["commands"][b] = command
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
