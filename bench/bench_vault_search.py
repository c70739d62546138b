"""Vault at scale, per backend: put throughput (unary and batched), Search recall@10 against exact
brute force (numpy, same vectors), and Search latency in process and over gRPC.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_vault_search.py \
        [--n 100000] [--unary 2000] [--queries 200] [--backends sqlite memory redis postgres]

Embeddings are 384-d, drawn around 2000 cluster centres (unit centre + gaussian noise of the same
norm), which is how real sentence embeddings sit, rather than isotropic noise, on which no ANN
index is meaningful. Queries are fresh points from the same clusters. The vault runs in this
process (ServerThread, its own event loop); the gRPC client is a plain channel to its port. Unary
puts are measured on a subset (--unary) before the batched load, so the 100k run stays bounded.
HNSW insertion happens in the vault's background indexer; "index_ready_s" is how long after the
last acknowledged put the index held every vector (staged ones are searchable exactly meanwhile).
Redis and PostgreSQL are the servers at 127.0.0.1:6379 and :5432 (own key prefix / schema,
removed afterwards). Figures go to bench/results/vault_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcp_services.common.config import load_config  # noqa: E402
from mcp_services.common.server import ServerThread  # noqa: E402
from mcp_services.episodic_vault.model import EpisodeFilter, Tier  # noqa: E402
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


def vault_overrides(backend: str, tag: str) -> dict[str, Any]:
    v: dict[str, Any] = {
        "backend": backend,
        "embedding_dim": DIM,
        "tiers": {"stm": {"capacity": 10_000}},
    }
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


def run_backend(
    backend: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {"backend": backend}
    with tempfile.TemporaryDirectory() as tmp:
        env = service_environ(Path(tmp) / "var")
        settings = load_config(environ=env, overrides={"vault": vault_overrides(backend, tag)})
        held: list[VaultService] = []

        def factory(ctx: Any) -> VaultService:
            held.append(VaultService(ctx))
            return held[-1]

        server = ServerThread("episodic-vault", "episodic_vault", factory, settings).start()
        channel = grpc.insecure_channel(
            f"127.0.0.1:{server.running.grpc_port}",
            options=[("grpc.max_receive_message_length", 64 << 20)],
        )
        stub = episodic_pb2_grpc.EpisodicVaultStub(channel)
        try:
            n = len(data)
            # Unary puts on a subset (the first ids), one call each.
            lat: list[float] = []
            t0 = time.perf_counter()
            for i in range(args.unary):
                s = time.perf_counter()
                stub.PutEpisode(pb.PutEpisodeRequest(episode=episode(i, data[i], tag)))
                lat.append(time.perf_counter() - s)
            unary_s = time.perf_counter() - t0
            out["put_unary"] = {"ops": args.unary, "per_s": round(args.unary / unary_s, 1)} | pct(
                lat
            )
            # The rest in streamed batches.
            t0 = time.perf_counter()
            for start in range(args.unary, n, args.batch):
                stop = min(n, start + args.batch)
                stub.PutEpisodes(
                    iter(
                        pb.PutEpisodeRequest(episode=episode(i, data[i], tag))
                        for i in range(start, stop)
                    )
                )
            batch_s = time.perf_counter() - t0
            out["put_batched"] = {
                "ops": n - args.unary,
                "batch": args.batch,
                "per_s": round((n - args.unary) / batch_s, 1),
            }
            store = held[0]._backend
            assert store is not None and store.index is not None
            t0 = time.perf_counter()
            while store.index.sizes()["pending"] > 0:
                time.sleep(0.05)
            out["index_ready_s"] = round(time.perf_counter() - t0, 2)
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
        finally:
            channel.close()
            server.stop()
            cleanup(backend, tag)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--unary", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "memory", "redis", "postgres"])
    args = ap.parse_args()
    data, queries = dataset(args.n, args.queries)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    t0 = time.perf_counter()
    truth = np.argsort(-(qn @ unit.T), axis=1)[:, :10]
    brute_s = (time.perf_counter() - t0) / len(queries)
    report: dict[str, Any] = {
        "bench": "vault_search",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/bench_vault_search.py "
        + " ".join(sys.argv[1:]),
        "n": args.n,
        "dim": DIM,
        "queries": args.queries,
        "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128},
        "baseline_brute_force_numpy_ms_per_query": round(brute_s * 1000, 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": [],
    }
    # Written after every backend, so a run cut short keeps what it measured.
    for b in args.backends:
        report["results"].append(run_backend(b, data, queries, truth, args))
        RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
