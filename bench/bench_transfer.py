"""Moving a vault between backends at scale: SQLite -> JSONL -> PostgreSQL, then verify.

N episodes (default 100k, 20 concepts + a 384-d embedding + 256 B payload each, a fifth of them
consolidated) are written to a fresh SQLite vault, exported with `tori-ops export`, imported
into a fresh PostgreSQL schema with `tori-ops import`, and compared with
`tori-ops verify-consistency` (ids, content hashes, consolidation state, counters). The same
commands an operator runs, as subprocesses; wall times and throughputs go to
bench/results/transfer.json. The peer: a plain `COPY` of the same rows' bytes into a scratch
table, the floor of what PostgreSQL can ingest. The export uses the default record format (base64
of the deterministic protobuf); the figures of the earlier protobuf-JSON run are kept beside the
new ones for comparison.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_transfer.py [--episodes 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

from mcp_services.episodic_vault.adapters.storage import open_backend
from mcp_services.episodic_vault.rpc.validation import validate_episode
from mcp_services.gen.tori.episodic.v1 import episodic_pb2 as pb
from mcp_services.ops.backend_spec import vault_config

DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
RESULTS = Path(__file__).parent / "results" / "transfer.json"


def fill(spec: str, n: int) -> float:
    cfg = vault_config(spec)
    backend = open_backend(cfg)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    now = int(time.time() * 1000)
    try:
        batch = []
        for i in range(n):
            concepts = rng.choice(10_000, size=20, replace=False)
            msg = pb.Episode(
                id=f"ep-{i:07d}",
                tags=["bench", f"t{i % 8}"],
                energy=float(rng.random()),
                activation=pb.ConceptActivation(
                    concept_ids=[f"c{c}" for c in concepts],
                    strengths=rng.random(20).astype(np.float32).tolist(),
                ),
                embedding=rng.standard_normal(384).astype(np.float32).tolist(),
                payload=rng.bytes(256),
            )
            msg.timestamp.FromMilliseconds(now - (n - i))
            batch.append(validate_episode(msg, cfg, now))
            if len(batch) == 1000:
                backend.put_many(batch, now)
                batch = []
        if batch:
            backend.put_many(batch, now)
        ids = [f"ep-{i:07d}" for i in range(0, n, 5)]
        for k in range(0, len(ids), 5000):
            backend.mark_consolidated(ids[k : k + 5000], 1)
    finally:
        backend.close()
    return time.perf_counter() - start


def ops(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run `tori-ops` (in the environment given, else ours); its wall time and output."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mcp_services.ops", *args], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"tori-ops {args[0]} failed: {result.stdout}{result.stderr}")
    return seconds, result.stdout.strip()


def copy_floor(path: Path) -> float:
    """COPY the export's lines as raw text into a scratch table: PostgreSQL's ingest floor."""
    table = f"bench_copy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (line text)")
        try:
            start = time.perf_counter()
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY {table} (line) FROM STDIN") as copy,
                path.open("rb") as f,
            ):
                next(f)
                for line in f:
                    copy.write_row((line.decode().rstrip("\n"),))
            return time.perf_counter() - start
        finally:
            conn.execute(f"DROP TABLE {table}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=100_000)
    args = parser.parse_args()
    n = args.episodes
    schema = f"bench_transfer_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        src = f"sqlite:path={Path(tmp) / 'source.db'}"
        dst = f"postgres:dsn={DSN},schema_name={schema}"
        out = Path(tmp) / "export.jsonl"
        try:
            fill_s = fill(src, n)
            print(f"filled {n} episodes into SQLite in {fill_s:.1f} s")
            export_s, export_out = ops("export", "--backend", src, "--out", str(out))
            print(export_out)
            import_s, import_out = ops("import", "--backend", dst, "--in", str(out))
            print(import_out)
            verify_s, verify_out = ops("verify-consistency", "--backend", src, "--against", dst)
            print(verify_out)
            floor_s = copy_floor(out)
            size = out.stat().st_size
        finally:
            with psycopg.connect(DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    figures = {
        "episodes": n,
        "format": "base64-protobuf (tori-ops export default)",
        "fill_sqlite_s": round(fill_s, 2),
        "export_bytes": size,
        "export_s": round(export_s, 2),
        "export_per_s": round(n / export_s),
        "import_s": round(import_s, 2),
        "import_per_s": round(n / import_s),
        "verify_s": round(verify_s, 2),
        "verify_consistent": verify_out.endswith("\nconsistent"),
        "peer_copy_raw_lines_s": round(floor_s, 2),
        "import_vs_copy_floor": round(import_s / floor_s, 1),
        "previous_protobuf_json_format": previous.get("previous_protobuf_json_format")
        or {k: previous[k] for k in ("export_bytes", "export_s", "import_s") if k in previous},
    }
    print(json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
