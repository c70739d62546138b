"""The soak of the deployment guide, shortened: 10 minutes at 200 operations/s against a native
fleet on private ports, with consolidation, pruning and learning cycles running.

    OMP_NUM_THREADS=1 python bench/soak.py [--minutes 10] [--rate 200] [--warmup 120]

It passes when the run ends with zero errors, zero lost episodes, and flat memory: each service's
resident set size at the end within 10% of its level after the warm-up. RSS is sampled every 5 s
from /proc; the figures (and the loadgen summary) go to bench/results/soak.json. On demand only,
never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcp_services.loadgen.native import NativeFleet  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"
FLAT = 0.10


def sample_rss(fleet: NativeFleet, stop: threading.Event, out: list[dict[str, Any]]) -> None:
    start = time.monotonic()
    while not stop.wait(5.0):
        out.append({"t_s": round(time.monotonic() - start, 1), "rss": fleet.rss()})


def rss_at(samples: list[dict[str, Any]], t_s: float) -> dict[str, int]:
    """The first sample at or after t_s (the warm-up level)."""
    return next(s["rss"] for s in samples if s["t_s"] >= t_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--warmup", type=float, default=120.0, help="seconds before the RSS baseline")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tori-soak-"))
    fleet = NativeFleet(work / "var", {"SLEEP_PRESSURE_THRESHOLD": "2000"})
    print(f"soak: fleet in {work}; {args.rate:g} ops/s for {args.minutes:g} min", flush=True)
    fleet.up()
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(fleet, stop, samples), daemon=True)
    try:
        sampler.start()
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "mcp_services.loadgen", "--rate", str(args.rate),
             "--duration", f"{args.minutes * 60:g}s", "--sleep-every", "60s",
             "--prune-every", "120s", "--learn-every", "10s", "--progress-every", "30s",
             "--seed", "2026", *fleet.loadgen_args()],
            env=fleet.env, stdout=subprocess.PIPE, text=True, timeout=args.minutes * 60 + 1800,
        )  # fmt: skip
        wall = time.monotonic() - started
        stop.set()
        sampler.join()
        summary = json.loads(proc.stdout)
        load_end = min(summary["duration_s"], samples[-1]["t_s"])
        warm = rss_at(samples, args.warmup)
        end = next(s["rss"] for s in reversed(samples) if s["t_s"] <= load_end + 5)
        growth = {name: round(end[name] / warm[name] - 1, 4) for name in warm if warm[name]}
        flat = all(abs(g) <= FLAT for name, g in growth.items() if name != "redis")
        lost = summary["verify"]["lost"] if summary["verify"] else None
        result = {
            "what": "native fleet, tori-loadgen mix put=60,get=25,search=10,recall=5 with "
            "sleep every 60 s, prune every 120 s, learn every 10 s",
            "command": "OMP_NUM_THREADS=1 python bench/soak.py " + " ".join(sys.argv[1:]),
            "machine": {"cores": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
            "rate_target": args.rate,
            "rate_achieved": summary["rate_achieved"],
            "late_dispatches": summary["late"],
            "duration_s": summary["duration_s"],
            "wall_s_with_verification": round(wall, 1),
            "errors": summary["errors"],
            "puts_acknowledged": summary["puts_acknowledged"],
            "lost_episodes": lost,
            "mismatched_episodes": summary["verify"]["mismatched"] if summary["verify"] else None,
            "rss_mb_after_warmup": {k: round(v / 2**20, 1) for k, v in warm.items()},
            "rss_mb_at_end": {k: round(v / 2**20, 1) for k, v in end.items()},
            "rss_growth": growth,
            "memory_flat_within_10pct": flat,
            "passed": summary["errors"] == 0 and lost == 0 and flat,
            "loadgen": summary,
            "rss_samples_mb": [
                {"t_s": s["t_s"], **{k: round(v / 2**20, 1) for k, v in s["rss"].items()}}
                for s in samples
            ],
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        keys = ("rate_achieved", "errors", "lost_episodes", "rss_growth", "passed")
        brief = {k: result[k] for k in keys}
        print(json.dumps(brief, indent=2))
        return 0 if result["passed"] else 1
    finally:
        stop.set()
        print(fleet.down())


if __name__ == "__main__":
    sys.exit(main())
