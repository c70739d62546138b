"""Vault put/get over gRPC beside raw redis-py SET/GET of the same payload, in one run.

Both servers run as their own processes on 127.0.0.1 (the vault from `python -m`, Redis from the
same binary the fleet uses), and one client process drives each in turn, so the two differ only in
what they do per request. Unary calls are timed one by one (p50/p99); batches report throughput.

    .venv/bin/python bench/bench_vault.py [--n 2000] [--batch 500] [--backends sqlite memory]

Figures go to bench/results/vault.json and are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis

from mcp_services.common.health import wait_serving
from mcp_services.fleet.redis_server import redis_argv, wait_ready
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "vault.json"
DIM = 384


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def episode(i: int, rng: random.Random, run: str) -> pb.Episode:
    """A typical episode: 20 concepts with strengths, a 384-d embedding, a 256-byte payload."""
    concepts = rng.sample(range(10_000), 20)
    ep = pb.Episode(
        id=f"bench-{run}-{i:07d}",
        tags=["bench"],
        source=pb.Source(type="bench"),
        energy=rng.random(),
        activation=pb.ConceptActivation(
            concept_ids=[f"concept:{c}" for c in concepts],
            strengths=[rng.random() for _ in concepts],
        ),
        payload=rng.randbytes(256),
        embedding=[rng.gauss(0, 1) for _ in range(DIM)],
    )
    ep.timestamp.FromMilliseconds(1_700_000_000_000 + i)
    return ep


def summarise(latencies_s: list[float], total_s: float, ops: int) -> dict[str, float]:
    ms = np.array(latencies_s) * 1000 if latencies_s else np.array([0.0])
    return {
        "ops": ops,
        "throughput_per_s": round(ops / total_s, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def timed(fn: Callable[[int], object], n: int) -> dict[str, float]:
    lat: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    return summarise(lat, time.perf_counter() - start, n)


def timed_batches(fn: Callable[[int, int], object], n: int, batch: int) -> dict[str, float]:
    lat: list[float] = []
    start = time.perf_counter()
    for lo in range(0, n, batch):
        t = time.perf_counter()
        fn(lo, min(n, lo + batch))
        lat.append(time.perf_counter() - t)
    res = summarise(lat, time.perf_counter() - start, n)
    res["batch"] = batch
    return res


def bench_vault(backend: str, n: int, batch: int, tmp: Path, redis_url: str) -> dict[str, Any]:
    port, mport = free_port(), free_port()
    env = dict(os.environ)
    run = f"bench{os.getpid()}"
    # The redis backend stores into the same private Redis the redis-py peer used (own prefix);
    # the postgres backend into a schema of its own in the configured PostgreSQL.
    env.update(
        VAULT_REDIS_URL=redis_url, VAULT_REDIS_KEY_PREFIX=f"{run}:", VAULT_POSTGRES_SCHEMA=run
    )
    env.update(
        TORI_ENV="test",
        TORI_VAR_DIR=str(tmp / backend),
        VAULT_BACKEND=backend,
        VAULT_GRPC_PORT=str(port),
        VAULT_METRICS_PORT=str(mport),
        SLEEP_GRPC_PORT=str(free_port()),
        PRUNER_GRPC_PORT=str(free_port()),
        KOOPMAN_GRPC_PORT=str(free_port()),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_services.episodic_vault.server"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    try:
        if not wait_serving(target, 60, lambda: proc.poll() is None):
            raise RuntimeError(f"vault ({backend}) did not start")
        channel = grpc.insecure_channel(target)
        stub = episodic_pb2_grpc.EpisodicVaultStub(channel)
        rng = random.Random(7)
        eps = [episode(i, rng, "u") for i in range(n)]
        beps = [episode(i, rng, "b") for i in range(n)]
        put = timed(lambda i: stub.PutEpisode(pb.PutEpisodeRequest(episode=eps[i])), n)
        get = timed(lambda i: stub.GetEpisode(pb.GetEpisodeRequest(id=eps[i].id)), n)

        def put_batch(lo: int, hi: int) -> None:
            stub.PutEpisodes(pb.PutEpisodeRequest(episode=e) for e in beps[lo:hi])

        batched = timed_batches(put_batch, n, batch)
        channel.close()
        return {"put_unary": put, "get": get, "put_batched": batched}
    finally:
        proc.terminate()
        proc.wait(30)
        if backend == "postgres":
            _drop_schema(env["VAULT_POSTGRES_SCHEMA"])


def _drop_schema(schema: str) -> None:
    import psycopg

    from mcp_services.common.config import load_config

    dsn = load_config(env="test").vault.postgres.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def bench_redis(n: int, batch: int, url: str) -> dict[str, Any]:
    """SET/GET of the same encoded episode bytes, one by one and pipelined in batches."""
    r = redis.Redis.from_url(url)
    rng = random.Random(7)
    payloads = [episode(i, rng, "r").SerializeToString() for i in range(n)]
    bpayloads = [episode(i, rng, "rb").SerializeToString() for i in range(n)]
    put = timed(lambda i: r.set(f"ep:{i}", payloads[i]), n)
    get = timed(lambda i: r.get(f"ep:{i}"), n)

    def set_batch(lo: int, hi: int) -> None:
        pipe = r.pipeline(transaction=True)
        for i in range(lo, hi):
            pipe.set(f"epb:{i}", bpayloads[i])
        pipe.execute()

    batched = timed_batches(set_batch, n, batch)
    r.close()
    return {
        "set": put,
        "get": get,
        "set_pipelined": batched,
        "payload_bytes": int(np.mean([len(p) for p in payloads])),
        "note": "redis-server appendonly yes, appendfsync everysec (its default)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "memory", "redis", "postgres"])
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "n": args.n,
        "embedding_dim": DIM,
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        server = subprocess.Popen(
            redis_argv(port, tmp / "redis"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            if not wait_ready(url, 15):
                raise RuntimeError("redis-server did not start")
            results["redis_py"] = bench_redis(args.n, args.batch, url)
            for backend in args.backends:
                results[f"vault_{backend}"] = bench_vault(backend, args.n, args.batch, tmp, url)
        finally:
            server.terminate()
            server.wait(30)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
