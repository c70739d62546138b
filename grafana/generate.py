"""Generate the provisioned Grafana dashboards under grafana/dashboards/ (one JSON per dashboard).

    python grafana/generate.py          # rewrite the JSON files
    python grafana/generate.py --check  # exit 1 if a committed file differs (tests do this)

A dashboard is a list of rows of panels; a panel is a title, a unit and PromQL queries. Every
query must return data against a running fleet under load (tests/deploy/test_observability.py
runs them against a real Prometheus), so rates use $__rate_interval and error panels read the
recorded series that are 0, not absent, when nothing fails. A panel that shows what a tuning alert
reads draws a threshold line at the alert's level (tests/deploy/test_grafana.py reads the levels
from prometheus/rules/alerts.yml).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SERVICES = ("episodic-vault", "sleep-scheduler", "sparse-pruner", "koopman-learner")
SLOW_METHODS = (
    "StartConsolidation|Complete|TriggerPruning|PreviewPruning|RollbackPruning|"
    "ProcessActivationBatch|UpdateOscillatorCouplings|PurgeTTL"
)


@dataclass(frozen=True)
class Q:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Q, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    width: int = 8
    thresholds: tuple[float, ...] = ()  # lines at alert levels


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    links: tuple[str, ...] = field(default=())


def q(expr: str, legend: str = "") -> tuple[Q, ...]:
    return (Q(expr, legend),)


def grpc_row(job: str) -> tuple[str, tuple[Panel, ...]]:
    sel = f'job="{job}"'
    return (
        "gRPC",
        (
            Panel(
                "Requests per second by method",
                q(
                    f"sum by (grpc_method) (rate(grpc_server_started_total{{{sel}}}"
                    "[$__rate_interval]))",
                    "{{grpc_method}}",
                ),
                "reqps",
            ),
            Panel(
                "Server-error ratio",
                q(f"job:grpc_server_error_ratio:rate5m{{{sel}}}", "{{job}}"),
                "percentunit",
                description="UNKNOWN, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS, "
                "UNIMPLEMENTED, RESOURCE_EXHAUSTED over all calls. Alert above 5%.",
            ),
            Panel(
                "Latency p50 / p99 (unary)",
                (
                    Q(f"job:grpc_server_handling_seconds:p50_5m{{{sel}}}", "p50"),
                    Q(f"job:grpc_server_handling_seconds:p99_5m{{{sel}}}", "p99"),
                ),
                "s",
            ),
        ),
    )


def fleet() -> Dashboard:
    jobs = "|".join((*SERVICES, "mcp-gateway"))
    return Dashboard(
        "tori-fleet",
        "TORI Memory — fleet overview",
        "Every service's health, traffic, errors and latency, and the guide's key metrics.",
        (
            (
                "Health",
                (
                    Panel(
                        "Services up",
                        q(f'up{{job=~"{jobs}"}}', "{{job}}"),
                        kind="stat",
                        width=12,
                        description="1 when Prometheus scrapes it. Alert: ToriServiceDown.",
                    ),
                    Panel(
                        "Firing alerts",
                        q('count by (alertname) (ALERTS{alertstate="firing"}) or vector(0)'),
                        kind="stat",
                        width=12,
                        description="Tuning alerts name the knob to turn in "
                        "docker-compose.override.yml.",
                    ),
                ),
            ),
            (
                "gRPC",
                (
                    Panel(
                        "Requests per second",
                        q("job:grpc_server_started:rate5m", "{{job}}"),
                        "reqps",
                    ),
                    Panel(
                        "Server-error ratio",
                        q("job:grpc_server_error_ratio:rate5m", "{{job}}"),
                        "percentunit",
                    ),
                    Panel(
                        "p99 latency, fast calls",
                        q("job:grpc_server_handling_seconds_fast:p99_5m", "{{job}}"),
                        "s",
                    ),
                ),
            ),
            (
                "Key metrics",
                (
                    Panel("Episodes stored", q("vault_episode_count", "episodes"), kind="stat"),
                    Panel("Vault size", q("vault_size_mb", "MiB"), "decmbytes", kind="stat"),
                    Panel(
                        "Consolidations per hour",
                        q("sum(increase(consol_ops_total[1h]))", "cycles"),
                        kind="stat",
                    ),
                    Panel("Energy delta (last cycle)", q("energy_delta", "energy_delta")),
                    Panel("Graph edges", q("edge_count", "edges")),
                    Panel(
                        "Prototypes stored",
                        q("sleep_prototypes", "prototypes"),
                        kind="stat",
                        description="Memories the consolidated graph holds (latest version).",
                    ),
                    Panel(
                        "Recall stability (last cycle)",
                        q("sleep_stability", "stability"),
                        "percentunit",
                        kind="stat",
                        description="Label-free recall of held-out episodes after the last "
                        "consolidation cycle.",
                    ),
                    Panel(
                        "Edges pruned per hour",
                        q("sum(increase(pruned_edges_total[1h]))", "pruned"),
                    ),
                    Panel("KCL modes", q("kcl_modes_total", "modes")),
                    Panel(
                        "Coupling updates per hour",
                        q("sum(increase(coupling_updates_total[1h]))", "updates"),
                    ),
                    Panel(
                        "Gateway canary split",
                        q("route:gateway_tool_calls:share_percent", "{{route}}"),
                        "percent",
                    ),
                ),
            ),
        ),
    )


def vault() -> Dashboard:
    return Dashboard(
        "tori-episodic-vault",
        "TORI Memory — EpisodicVault",
        "Episodes, storage, put/get latency and rejections.",
        (
            (
                "Store",
                (
                    Panel("Episodes stored", q("vault_episode_count", "episodes")),
                    Panel("Size", q("vault_size_mb", "MiB"), "decmbytes"),
                    Panel(
                        "Puts per second by outcome",
                        q(
                            "sum by (status) (rate(vault_episodes_stored_total[$__rate_interval]))",
                            "{{status}}",
                        ),
                        "ops",
                    ),
                    Panel(
                        "Put latency p99 by kind",
                        q(
                            "histogram_quantile(0.99, sum by (kind, le) "
                            "(rate(vault_put_seconds_bucket[$__rate_interval])))",
                            "{{kind}}",
                        ),
                        "s",
                    ),
                    Panel(
                        "Get latency p99",
                        q(
                            "histogram_quantile(0.99, sum by (le) "
                            "(rate(vault_get_seconds_bucket[$__rate_interval])))",
                            "get",
                        ),
                        "s",
                    ),
                    Panel(
                        "Episodes rejected (bad input) per second",
                        q(
                            "sum by (field) (rate(vault_rejected_total[$__rate_interval])) "
                            "or vector(0)",
                            "{{field}}",
                        ),
                        "ops",
                    ),
                ),
            ),
            grpc_row("episodic-vault"),
        ),
    )


def scheduler() -> Dashboard:
    return Dashboard(
        "tori-sleep-scheduler",
        "TORI Memory — SleepScheduler",
        "Consolidation cycles and the tuning signals of the energy-based replay.",
        (
            (
                "Consolidation",
                (
                    Panel(
                        "Cycles per hour",
                        q("sum(increase(consol_ops_total[1h]))", "cycles"),
                    ),
                    Panel(
                        "Energy delta per cycle",
                        q("energy_delta", "energy_delta"),
                        description="Negative: the replayed patterns sit deeper. Alert when it "
                        "changes sign 3 times in 2 h (halve SLEEP_ETA).",
                    ),
                    Panel(
                        "Energy delta sign changes (2 h)",
                        q("tori:energy_delta:sign_changes_2h", "sign changes"),
                        description="Across cycles that learned something. 3 or more for 5 min: "
                        "halve SLEEP_ETA.",
                        thresholds=(3,),
                    ),
                ),
            ),
            (
                "Graph",
                (
                    Panel(
                        "Edges (latest version)",
                        q("sleep_graph_edges", "edges"),
                        description="Edges of the newest graph version, consolidated or pruned.",
                    ),
                    Panel(
                        "Prototypes stored",
                        q("sleep_prototypes", "prototypes"),
                        description="Memories the newest version holds: assemblies of concepts "
                        "that occurred together, merged from episodes.",
                    ),
                    Panel(
                        "Recall stability",
                        q("sleep_stability", "held-out recall"),
                        "percentunit",
                        description="Label-free recall of held-out episodes after the last cycle.",
                    ),
                    Panel("Graph version", q("sleep_graph_version", "version"), kind="stat"),
                    Panel(
                        "Unconsolidated episodes in the vault",
                        q("sleep_vault_unconsolidated", "unconsolidated"),
                        description="At the last pressure check; at sleep_scheduler."
                        "pressure_threshold (SLEEP_PRESSURE_THRESHOLD) a cycle starts by itself.",
                    ),
                    Panel(
                        "Last cycle had something to learn",
                        q("sleep_cycle_learned", "learned"),
                        kind="stat",
                        description="1: new structure the graph did not recall yet. 0: no "
                        "structure, or already stored; the tuning alerts ignore such a cycle.",
                    ),
                ),
            ),
            (
                "Tuning signals",
                (
                    Panel(
                        "Relative energy drop",
                        q("sleep_energy_drop", "drop"),
                        "percentunit",
                        description="Below 5% for 30 min, in cycles that learned something: "
                        "raise SLEEP_T0.",
                        thresholds=(0.05,),
                    ),
                    Panel(
                        "Settle loops",
                        q("sleep_settle_loops", "loops"),
                        description="Above 50 for 15 min, in cycles that learned something: "
                        "lower SLEEP_T0.",
                        thresholds=(50,),
                    ),
                    Panel(
                        "T0 and eta in force",
                        (Q("sleep_t0", "T0"), Q("sleep_eta", "eta")),
                    ),
                ),
            ),
            grpc_row("sleep-scheduler"),
        ),
    )


def pruner() -> Dashboard:
    return Dashboard(
        "tori-sparse-pruner",
        "TORI Memory — SparsePruner",
        "Graph size, pruning runs, the quality guard and the growth rule.",
        (
            (
                "Graph",
                (
                    Panel("Edges", q("edge_count", "edges")),
                    Panel(
                        "Edges pruned per hour",
                        q("sum(increase(pruned_edges_total[1h]))", "pruned"),
                    ),
                    Panel(
                        "Runs per hour by outcome",
                        q("sum by (outcome) (increase(pruner_runs_total[1h]))", "{{outcome}}"),
                    ),
                ),
            ),
            (
                "Tuning signals",
                (
                    Panel(
                        "Weekly graph growth",
                        (
                            Q("pruner_graph_growth_weekly", "pruner (versions)"),
                            Q("tori:edge_count:growth_weekly_deriv6h", "edge_count slope"),
                        ),
                        "percentunit",
                        description="Above 5%/week for 1 h: raise PRUNE_TAU x1.5.",
                        thresholds=(0.05,),
                    ),
                    Panel(
                        "Recall before / after the last commit",
                        (
                            Q("pruner_quality_before", "before"),
                            Q("pruner_quality_after", "after"),
                        ),
                        "percentunit",
                        description="On the guard's cues, fixed by the stored prototypes.",
                    ),
                    Panel(
                        "Recall drop of the last commit and its alert level",
                        (
                            Q("tori:pruner_quality:drop", "drop"),
                            Q("clamp_min(2 * pruner_quality_stderr, 0.05)", "alert level"),
                        ),
                        "percentunit",
                        description="Alert when the drop exceeds 5% and 2 standard errors of "
                        "the guard's measure (a smaller drop is the noise of its cues).",
                        thresholds=(0.05,),
                    ),
                    Panel(
                        "tau in force / proposed",
                        (Q("pruner_tau", "tau"), Q("pruner_tau_proposed", "proposed")),
                    ),
                    Panel("Solver sweeps (last run)", q("pruner_solver_iterations", "sweeps")),
                    Panel(
                        "Duality gap (last run)",
                        q("pruner_duality_gap", "relative gap"),
                        "sci",
                    ),
                    Panel(
                        "Run time p99",
                        q(
                            "histogram_quantile(0.99, sum by (le) "
                            "(rate(pruner_run_seconds_bucket[1h])))",
                            "p99",
                        ),
                        "s",
                    ),
                ),
            ),
            grpc_row("sparse-pruner"),
        ),
    )


def learner() -> Dashboard:
    return Dashboard(
        "tori-koopman-learner",
        "TORI Memory — KoopmanLearner",
        "Spectral modes, psi-drift and the rank rule, couplings and prediction error.",
        (
            (
                "Modes and couplings",
                (
                    Panel("Modes kept", q("kcl_modes_total", "modes")),
                    Panel(
                        "Modes gained in 6 h",
                        q("delta(kcl_modes_total[6h])", "gained"),
                        description="10 or more for 30 min: raise KCL_L1_STRENGTH.",
                        thresholds=(10,),
                    ),
                    Panel(
                        "Coupling updates per hour",
                        q("sum(increase(coupling_updates_total[1h]))", "updates"),
                    ),
                    Panel("Couplings", q("kcl_coupling_count", "couplings")),
                ),
            ),
            (
                "Tuning signals",
                (
                    Panel(
                        "psi-drift",
                        (
                            Q("kcl_psi_drift", "psi-drift"),
                            Q("kcl_psi_drift_threshold", "threshold"),
                        ),
                        "rad",
                        description="Above 0.2 rad for 10 min: raise KCL_RANK to 75.",
                        thresholds=(0.2,),
                    ),
                    Panel(
                        "Rank in force / recommended",
                        (Q("kcl_rank", "in force"), Q("kcl_rank_recommended", "recommended")),
                    ),
                    Panel("Prediction error", q("kcl_prediction_error", "relative error")),
                    Panel("Spectral radius", q("kcl_spectral_radius", "max |lambda|")),
                    Panel(
                        "Update time p99 by kind",
                        q(
                            "histogram_quantile(0.99, sum by (kind, le) "
                            "(rate(kcl_update_seconds_bucket[1h])))",
                            "{{kind}}",
                        ),
                        "s",
                    ),
                ),
            ),
            grpc_row("koopman-learner"),
        ),
    )


def gateway() -> Dashboard:
    return Dashboard(
        "tori-mcp-gateway",
        "TORI Memory — MCP gateway",
        "Tool calls by route (primary / canary), errors, latency and the canary split.",
        (
            (
                "Canary",
                (
                    Panel(
                        "Canary percent (setting)",
                        q("gateway_canary_percent", "setting"),
                        "percent",
                    ),
                    Panel(
                        "Share of calls per route",
                        q("route:gateway_tool_calls:share_percent", "{{route}}"),
                        "percent",
                    ),
                    Panel(
                        "Error ratio per route",
                        q("route:gateway_tool_error_ratio:rate5m", "{{route}}"),
                        "percentunit",
                    ),
                    Panel(
                        "p99 tool latency per route",
                        q("route:gateway_tool_seconds:p99_5m", "{{route}}"),
                        "s",
                    ),
                ),
            ),
            (
                "Tools",
                (
                    Panel(
                        "Tool calls per second by tool and outcome",
                        q(
                            "sum by (tool, outcome) "
                            "(rate(gateway_tool_calls_total[$__rate_interval]))",
                            "{{tool}} {{outcome}}",
                        ),
                        "reqps",
                        width=12,
                    ),
                    Panel(
                        "Service calls per second by service and code",
                        q(
                            "sum by (service, code) "
                            "(rate(gateway_backend_calls_total[$__rate_interval]))",
                            "{{service}} {{code}}",
                        ),
                        "reqps",
                        width=12,
                    ),
                ),
            ),
        ),
    )


DASHBOARDS = (fleet, vault, scheduler, pruner, learner, gateway)


def render(d: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row_title, row in d.rows:
        panels.append(
            {"id": next_id, "type": "row", "title": row_title, "collapsed": False,
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
        )  # fmt: skip
        next_id += 1
        y += 1
        x = 0
        for p in row:
            if x + p.width > 24:
                x, y = 0, y + 8
            panel: dict[str, Any] = {
                "id": next_id,
                "type": p.kind,
                "title": p.title,
                "description": p.description,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "datasource": DATASOURCE,
                        "expr": t.expr,
                        "legendFormat": t.legend or "__auto",
                        "range": True,
                    }
                    for i, t in enumerate(p.queries)
                ],
            }
            if p.kind == "stat":
                panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}}
            if p.thresholds:
                defaults = panel["fieldConfig"]["defaults"]
                defaults["thresholds"] = {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}]
                    + [{"color": "red", "value": v} for v in p.thresholds],
                }
                defaults["custom"] = {"thresholdsStyle": {"mode": "dashed"}}
            panels.append(panel)
            next_id += 1
            x += p.width
        y += 8
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["tori-memory"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "links": [
            {"type": "dashboards", "tags": ["tori-memory"], "asDropdown": True, "title": "TORI"}
        ],
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def files() -> dict[Path, str]:
    out = {}
    for make in DASHBOARDS:
        d = make()
        out[OUT / f"{d.uid}.json"] = json.dumps(render(d), indent=2) + "\n"
    return out


def main(argv: list[str]) -> int:
    wanted = files()
    if "--check" in argv:
        stale = [p.name for p, text in wanted.items() if not p.exists() or p.read_text() != text]
        extra = [p.name for p in OUT.glob("*.json") if p not in wanted]
        if stale or extra:
            print(f"stale: {stale}, not generated: {extra}; run python grafana/generate.py")
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
