"""The MCP gateway's added latency over calling the vault directly, in one run.

A vault (memory backend) and the gateway run as their own processes on 127.0.0.1; one client
process times, call by call, the same operations three ways:
  direct   gRPC straight to the vault (PutEpisode / GetEpisode), the baseline;
  raw      one JSON-RPC tools/call POST per operation to the gateway (auth, routing, gRPC);
  sdk      the official mcp SDK's Client over streamable HTTP (what an agent uses).
Added latency = gateway p50/p99 minus direct p50/p99.

    .venv/bin/python bench/bench_gateway.py [--n 500]

Figures go to bench/results/gateway.json and are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx2
import numpy as np
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_services.common.health import wait_serving
from mcp_services.gateway.health import wait_serving as gateway_serving
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.gen.tori.episodic.v1 import episodic_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import free_ports  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gateway.json"
KEY = "tori_bench_key_0123456789abcdef"


def summary(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "n": len(samples)}  # fmt: skip


def concepts(i: int) -> dict[str, float]:
    return {f"concept:c{i % 50}": 0.9, f"concept:d{i % 7}": 0.6}


def direct(target: str, n: int, prefix: str) -> dict[str, dict[str, float]]:
    ch = grpc.insecure_channel(target)
    stub = episodic_pb2_grpc.EpisodicVaultStub(ch)
    puts, gets = [], []
    for i in range(n):
        c = concepts(i)
        ep = pb.Episode(
            id=f"{prefix}-{i}", payload=f"moment {i}".encode(),
            activation=pb.ConceptActivation(concept_ids=list(c), strengths=list(c.values())),
        )  # fmt: skip
        t = time.perf_counter()
        stub.PutEpisode(pb.PutEpisodeRequest(episode=ep), timeout=5)
        puts.append(time.perf_counter() - t)
    for i in range(n):
        t = time.perf_counter()
        stub.GetEpisode(pb.GetEpisodeRequest(id=f"{prefix}-{i}"), timeout=5)
        gets.append(time.perf_counter() - t)
    ch.close()
    return {"put": summary(puts), "get": summary(gets)}


def raw(url: str, n: int, prefix: str) -> dict[str, dict[str, float]]:
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "application/json, text/event-stream"}
    puts, gets = [], []
    with httpx2.Client(headers=headers, timeout=10) as http:

        def tool(name: str, args: dict[str, Any], i: int) -> None:
            body = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                    "params": {"name": name, "arguments": args}}  # fmt: skip
            r = http.post(url, json=body)
            r.raise_for_status()
            assert not r.json()["result"].get("isError"), r.text

        for i in range(n):
            t = time.perf_counter()
            tool(
                "memory.put",
                {"id": f"{prefix}-{i}", "episodeBlob": f"moment {i}", "concepts": concepts(i)},
                i,
            )
            puts.append(time.perf_counter() - t)
        for i in range(n):
            t = time.perf_counter()
            tool("memory.get", {"id": f"{prefix}-{i}"}, i)
            gets.append(time.perf_counter() - t)
    return {"put": summary(puts), "get": summary(gets)}


def sdk(url: str, n: int, prefix: str) -> dict[str, dict[str, float]]:
    async def go() -> dict[str, dict[str, float]]:
        puts: list[float] = []
        gets: list[float] = []
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):

            async def timed(name: str, args: dict[str, Any], into: list[float]) -> None:
                t = time.perf_counter()
                r = await client.call_tool(name, args)
                into.append(time.perf_counter() - t)
                assert not r.is_error

            for i in range(n):
                args = {"id": f"{prefix}-{i}", "episodeBlob": f"moment {i}"}
                await timed("memory.put", args | {"concepts": concepts(i)}, puts)
            for i in range(n):
                await timed("memory.get", {"id": f"{prefix}-{i}"}, gets)
        return {"put": summary(puts), "get": summary(gets)}

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    ports = free_ports(4)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORI_", "VAULT_", "GATEWAY_"))}
    env |= {
        "TORI_ENV": "test", "TORI_VAR_DIR": str(tmp), "LOG_LEVEL": "error",
        "OMP_NUM_THREADS": "1", "VAULT_BACKEND": "memory",
        "VAULT_GRPC_PORT": str(ports[0]), "VAULT_METRICS_PORT": str(ports[1]),
        "GATEWAY_PORT": str(ports[2]), "GATEWAY_METRICS_PORT": str(ports[3]),
        "GATEWAY_API_KEYS": KEY,
    }  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mcp_services.episodic_vault.server"], env=env, cwd=ROOT
        ),
        subprocess.Popen([sys.executable, "-m", "mcp_services.gateway"], env=env, cwd=ROOT),
    ]
    try:
        target = f"127.0.0.1:{ports[0]}"
        url = f"http://127.0.0.1:{ports[2]}/mcp"
        assert wait_serving(target, 60), "vault did not start"
        assert gateway_serving(f"http://127.0.0.1:{ports[2]}/healthz", 60), "gateway did not start"
        warm = max(20, args.n // 10)
        direct(target, warm, "warm-d"), raw(url, warm, "warm-r"), sdk(url, warm, "warm-s")
        results = {"direct": direct(target, args.n, "d"), "raw": raw(url, args.n, "r"),
                   "sdk": sdk(url, args.n, "s")}  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    added = {
        way: {
            op: {q: results[way][op][q] - results["direct"][op][q] for q in ("p50_ms", "p99_ms")}
            for op in ("put", "get")
        }
        for way in ("raw", "sdk")
    }
    out = {
        "benchmark": "gateway added latency over the vault called directly",
        "command": f"bench/bench_gateway.py --n {args.n}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "vault_backend": "memory",
        "latency": results,
        "added_over_direct": added,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
