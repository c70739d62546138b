"""The soak of the deployment guide, shortened: a warm-up, then 10 minutes at 200 operations/s
against a native fleet on private ports, with consolidation, pruning and learning cycles running.

    OMP_NUM_THREADS=1 python bench/soak.py [--minutes 10] [--warmup 360] [--rate 200]

The fleet runs with config/soak.yaml (TORI_ENV=soak): the vault keeps at most 20000 consolidated
episodes and prunes the least important beyond that, so the data is bounded in steady state the
way an operator would bound it. The warm-up is long enough for every service's state to reach its
bound (the vault's LTM at max_items, the learner's window at window_snapshots); the samples of
that state are in the results, beside the RSS, to show it.

It passes when the run ends with zero errors, zero lost episodes, and flat memory: each service's
RSS level at the end within 10% of its level after the warm-up. A *level* is the median of the
RSS samples (every 5 s, from /proc) over a minute: the learner's and pruner's RSS swing by tens of
MB within seconds as a refit or a pruning solve allocates and frees its arrays, so one sample is
not a level. Single samples and the peak are reported beside it.

Lost vs evicted (mcp_services/loadgen/retention.py): an acknowledged episode may be missing only
when the vault was allowed to prune it (consolidated, so in LTM) and the vault's own pruned count
covers it; any other missing episode is lost. On demand only, never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcp_services.common.clients import ClientFactory  # noqa: E402
from mcp_services.common.config import load_config  # noqa: E402
from mcp_services.gen.tori.episodic.v1 import episodic_pb2, episodic_pb2_grpc  # noqa: E402
from mcp_services.gen.tori.koopman.v1 import koopman_pb2, koopman_pb2_grpc  # noqa: E402
from mcp_services.gen.tori.pruner.v1 import pruner_pb2, pruner_pb2_grpc  # noqa: E402
from mcp_services.gen.tori.sleep.v1 import sleep_pb2, sleep_pb2_grpc  # noqa: E402
from mcp_services.loadgen.native import NativeFleet  # noqa: E402
from mcp_services.loadgen.retention import scrape_pruned  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"
FLAT = 0.10
SAMPLE_S = 5.0
LEVEL_S = 60.0


class FleetState:
    """Each service's data state, read over gRPC (what RSS should follow)."""

    def __init__(self, fleet: NativeFleet) -> None:
        self.fleet = fleet
        # The fleet runs with service auth on: send its own key, as every CLI does.
        clients = ClientFactory.of(load_config(environ=fleet.env))
        ch = {n: clients.channel(target=fleet.target(n)) for n in fleet.ports if n != "mcp-gateway"}
        self.channels = list(ch.values())
        self.vault = episodic_pb2_grpc.EpisodicVaultStub(ch["episodic-vault"])
        self.sleep = sleep_pb2_grpc.SleepSchedulerStub(ch["sleep-scheduler"])
        self.pruner = pruner_pb2_grpc.SparsePrunerStub(ch["sparse-pruner"])
        self.learner = koopman_pb2_grpc.KoopmanLearnerStub(ch["koopman-learner"])

    def read(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        calls: dict[str, Callable[[], dict[str, Any]]] = {
            "vault": self._vault,
            "scheduler": self._scheduler,
            "pruner": self._pruner,
            "learner": self._learner,
        }
        for name, call in calls.items():
            try:
                out[name] = call()
            except grpc.RpcError as exc:
                out[name] = {"error": f"{exc.code().name}: {exc.details()}"}
        return out

    def _vault(self) -> dict[str, Any]:
        s = self.vault.GetStats(episodic_pb2.GetStatsRequest(), timeout=10)
        tiers = {episodic_pb2.Tier.Name(t.tier).removeprefix("TIER_").lower(): t.episode_count
                 for t in s.tiers}  # fmt: skip
        try:
            pruned: int | None = scrape_pruned(self.fleet.metrics_target("episodic-vault"))
        except (OSError, ValueError):
            pruned = None
        return {"episodes": s.episode_count, "unconsolidated": s.unconsolidated_count,
                "tiers": tiers, "pruned": pruned}  # fmt: skip

    def _scheduler(self) -> dict[str, Any]:
        s = self.sleep.GetReplayStats(sleep_pb2.GetReplayStatsRequest(), timeout=10)
        g = self.sleep.GetGraphStats(sleep_pb2.GetGraphStatsRequest(), timeout=10)
        return {"cycles": s.cycles_total, "failed": s.cycles_failed, "episodes": s.episodes_total,
                "prototypes": s.prototype_count, "version": s.graph_version,
                "concepts": g.header.concept_count, "edges": g.header.edge_count}  # fmt: skip

    def _pruner(self) -> dict[str, Any]:
        s = self.pruner.GetPruningStats(pruner_pb2.GetPruningStatsRequest(), timeout=10)
        return {"runs": s.runs_total, "committed": s.runs_committed, "refused": s.runs_refused,
                "failed": s.runs_failed, "pruned_edges": s.pruned_edges_total,
                "edges": s.edge_count}  # fmt: skip

    def _learner(self) -> dict[str, Any]:
        s = self.learner.GetProcessingStatus(koopman_pb2.GetProcessingStatusRequest(), timeout=10)
        return {"window_snapshots": s.window_snapshots, "window_traces": s.window_traces,
                "episodes_processed": s.episodes_processed, "episodes_behind": s.episodes_behind,
                "refits": s.refits, "online_updates": s.online_updates}  # fmt: skip

    def close(self) -> None:
        for c in self.channels:
            c.close()


def sample(fleet: NativeFleet, stop: threading.Event, out: list[dict[str, Any]]) -> None:
    state = FleetState(fleet)
    start = time.monotonic()
    try:
        while not stop.wait(SAMPLE_S):
            t = round(time.monotonic() - start, 1)
            out.append({"t_s": t, "rss": fleet.rss(), "state": state.read()})
    finally:
        state.close()


def level(samples: list[dict[str, Any]], lo: float, hi: float) -> dict[str, float]:
    """Median RSS per service over the samples with lo <= t_s <= hi."""
    window = [s["rss"] for s in samples if lo <= s["t_s"] <= hi]
    if not window:
        raise RuntimeError(f"no RSS sample between {lo} s and {hi} s")
    return {name: statistics.median(w[name] for w in window if name in w) for name in window[0]}


def mb(rss: dict[str, float]) -> dict[str, float]:
    return {k: round(v / 2**20, 1) for k, v in rss.items()}


def rss_figures(samples: list[dict[str, Any]], warmup: float, load_end: float) -> dict[str, Any]:
    warm = level(samples, warmup, warmup + LEVEL_S)
    end = level(samples, load_end - LEVEL_S, load_end)
    after = [s["rss"] for s in samples if warmup <= s["t_s"] <= load_end]
    peak = {name: max(s.get(name, 0) for s in after) for name in warm}
    first = next(s["rss"] for s in samples if s["t_s"] >= warmup)
    last = next(s["rss"] for s in reversed(samples) if s["t_s"] <= load_end)
    growth = {n: round(end[n] / warm[n] - 1, 4) for n in warm if warm[n]}
    return {
        "rss_mb_level_after_warmup": mb(warm),
        "rss_mb_level_at_end": mb(end),
        "rss_growth": growth,
        "rss_mb_peak_after_warmup": mb(peak),
        "rss_mb_single_sample_after_warmup": mb(first),
        "rss_mb_single_sample_at_end": mb(last),
        "rss_growth_single_samples": {
            n: round(last[n] / first[n] - 1, 4) for n in first if first[n] and n in last
        },
        "memory_flat_within_10pct": all(abs(g) <= FLAT for n, g in growth.items() if n != "redis"),
    }


def state_at(samples: list[dict[str, Any]], t_s: float) -> dict[str, Any]:
    return next(s["state"] for s in samples if s["t_s"] >= t_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="measured minutes after warm-up")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--warmup", type=float, default=360.0, help="seconds before the RSS baseline")
    args = p.parse_args()
    total_s = args.warmup + args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="tori-soak-"))
    fleet = NativeFleet(work / "var", {"TORI_ENV": "soak"})
    load_start = os.getloadavg()
    print(f"soak: fleet in {work}; {args.rate:g} ops/s, {args.warmup:g} s warm-up + "
          f"{args.minutes:g} min; load average {load_start}", flush=True)  # fmt: skip
    fleet.up()
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(fleet, stop, samples), daemon=True)
    try:
        sampler.start()
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "mcp_services.loadgen", "--rate", str(args.rate),
             "--duration", f"{total_s:g}s", "--sleep-every", "60s",
             "--prune-every", "120s", "--learn-every", "10s", "--progress-every", "30s",
             "--seed", "2026", *fleet.loadgen_args()],
            env=fleet.env, stdout=subprocess.PIPE, text=True, timeout=total_s + 1800,
        )  # fmt: skip
        wall = time.monotonic() - started
        stop.set()
        sampler.join()
        summary = json.loads(proc.stdout)
        load_end = min(summary["duration_s"], samples[-1]["t_s"])
        rss = rss_figures(samples, args.warmup, load_end)
        verify = summary["verify"] or {}
        lost = verify.get("lost")
        end_state = samples[-1]["state"]
        triggers = summary["triggers"]
        cycles = {
            "sleep": {
                "scheduler_cycles": end_state["scheduler"].get("cycles"),
                "scheduler_failed": end_state["scheduler"].get("failed"),
                "loadgen_triggers": triggers.get("sleep"),
            },
            "prune": {"pruner": end_state["pruner"], "loadgen_triggers": triggers.get("prune")},
            "learn": {"learner": end_state["learner"], "loadgen_batches": triggers.get("learn")},
        }
        result = {
            "what": (
                "native fleet with config/soak.yaml (vault.tiers.ltm.max_items 20000: the vault "
                "prunes its least important consolidated episodes beyond 20000, so the data is "
                "bounded; unconsolidated episodes are never pruned); tori-loadgen mix "
                "put=60,get=25,search=10,recall=5, sleep every 60 s (and on vault pressure, 2000 "
                "unconsolidated), prune every 120 s (and after every consolidation), learn every "
                f"10 s; {args.warmup:g} s warm-up, then {args.minutes:g} min measured. Lost: an "
                "acknowledged episode missing although no consolidation could have read it "
                "(sent after the newest cycle's finish, so not in LTM, so not prunable), or "
                "missing beyond the vault's own pruned count (vault_pruned_episodes). Evicted: "
                "missing, prunable, and covered by that count. RSS levels are medians over 60 s."
            ),
            "command": "OMP_NUM_THREADS=1 python bench/soak.py " + " ".join(sys.argv[1:]),
            "machine": {
                "cores": os.cpu_count(),
                "loadavg_at_start": load_start,
                "loadavg_at_end": os.getloadavg(),
                "note": "2 cores shared with other helpers' benchmarks during the run",
            },
            "rate_target": args.rate,
            "rate_achieved": summary["rate_achieved"],
            "late_dispatches": summary["late"],
            "warmup_s": args.warmup,
            "duration_s": summary["duration_s"],
            "wall_s_with_verification": round(wall, 1),
            "errors": summary["errors"],
            "puts_acknowledged": summary["puts_acknowledged"],
            "lost_episodes": lost,
            "lost_protected": verify.get("lost_protected"),
            "lost_unaccounted": verify.get("unaccounted"),
            "evicted_episodes": verify.get("evicted"),
            "vault_pruned_episodes": verify.get("vault_pruned"),
            "evicted_seen_by_gets": summary["ops"].get("get", {}).get("evicted", 0),
            "mismatched_episodes": verify.get("mismatched"),
            **rss,
            "cycles_completed": cycles,
            "state_after_warmup": state_at(samples, args.warmup),
            "state_at_end": end_state,
            "passed": summary["errors"] == 0 and lost == 0 and rss["memory_flat_within_10pct"],
            "loadgen": summary,
            "samples": [
                {"t_s": s["t_s"], "rss_mb": mb(s["rss"]), "state": s["state"]} for s in samples
            ],
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
        keys = ("rate_achieved", "errors", "lost_episodes", "evicted_episodes", "rss_growth",
                "passed")  # fmt: skip
        print(json.dumps({k: result[k] for k in keys}, indent=2))
        return 0 if result["passed"] else 1
    finally:
        stop.set()
        print(fleet.down())


if __name__ == "__main__":
    sys.exit(main())
