"""grafana/: provisioning that matches the compose deployment, and dashboards that show the
guide's key metrics, the consolidated graph, the tuning signals (with lines at the alert levels),
gRPC traffic and the canary split."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.promql import BUILTIN, exported_names, series_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
KEY_METRICS = ("vault_episode_count", "vault_size_mb", "consol_ops_total", "energy_delta",
               "pruned_edges_total", "edge_count", "kcl_modes_total", "coupling_updates_total")  # fmt: skip
SERVICE_DASHBOARDS = {
    "tori-episodic-vault": ("episodic-vault", ("vault_episode_count", "vault_size_mb")),
    "tori-sleep-scheduler": ("sleep-scheduler", ("consol_ops_total", "energy_delta",
                             "sleep_energy_drop", "sleep_settle_loops", "sleep_t0", "sleep_eta",
                             "sleep_graph_edges", "sleep_prototypes", "sleep_stability",
                             "sleep_graph_version", "sleep_vault_unconsolidated",
                             "sleep_cycle_learned")),
    "tori-sparse-pruner": ("sparse-pruner", ("pruned_edges_total", "edge_count",
                           "pruner_graph_growth_weekly", "pruner_quality_after", "pruner_tau",
                           "pruner_quality_stderr")),
    "tori-koopman-learner": ("koopman-learner", ("kcl_modes_total", "coupling_updates_total",
                             "kcl_psi_drift", "kcl_rank", "kcl_prediction_error")),
}  # fmt: skip


# Tuning alert -> (dashboard, the query of the panel that shows what it reads). The panel draws
# a threshold line at the level the alert's expression compares against.
ALERT_PANELS = {
    "SleepEnergyDropLow": ("tori-sleep-scheduler", "sleep_energy_drop"),
    "SleepSettleLoopsHigh": ("tori-sleep-scheduler", "sleep_settle_loops"),
    "SleepEnergyDeltaOscillating": ("tori-sleep-scheduler", "tori:energy_delta:sign_changes_2h"),
    "GraphGrowthHigh": ("tori-sparse-pruner", "pruner_graph_growth_weekly"),
    "PsiDriftHigh": ("tori-koopman-learner", "kcl_psi_drift"),
    "KclModesGrowing": ("tori-koopman-learner", "delta(kcl_modes_total[6h])"),
    "PrunerQualityDrop": ("tori-sparse-pruner", "tori:pruner_quality:drop"),
}


def alert_level(alert: str) -> float:
    """The constant an alert's expression compares against (the last number after <, > or >=,
    or the floor of a clamp_min)."""
    data = yaml.safe_load((ROOT / "prometheus" / "rules" / "alerts.yml").read_text())
    (expr,) = [r["expr"] for g in data["groups"] for r in g["rules"] if r.get("alert") == alert]
    found = re.findall(r"(?:[<>]=?|clamp_min\(.*,)\s*([0-9.]+)\)?", expr)
    assert found, (alert, expr)
    return float(found[-1])


def dashboards() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        out[d["uid"]] = d
    return out


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in d["panels"] if p["type"] != "row"]


def exprs(d: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(d) for t in p["targets"]]


def recorded() -> set[str]:
    data = yaml.safe_load((ROOT / "prometheus" / "rules" / "recording.yml").read_text())
    return {r["record"] for g in data["groups"] for r in g["rules"]}


class TestProvisioning:
    def test_datasource_points_at_the_compose_prometheus(self) -> None:
        """One default Prometheus datasource at the compose service's address, with the uid the
        dashboards use."""
        ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
        (only,) = ds["datasources"]
        assert (only["type"], only["uid"], only["url"]) == (
            "prometheus", "prometheus", "http://prometheus:9090"
        )  # fmt: skip
        assert only["isDefault"] is True
        for d in dashboards().values():
            for p in panels(d):
                assert p["datasource"]["uid"] == only["uid"], (d["uid"], p["title"])

    def test_dashboard_provider_reads_the_mounted_folder(self) -> None:
        """The provider's path is where compose mounts grafana/dashboards."""
        prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/tori-memory.yml").read_text())
        path = prov["providers"][0]["options"]["path"]
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        assert f"./grafana/dashboards:{path}:ro" in compose["services"]["grafana"]["volumes"]

    def test_committed_dashboards_are_the_generated_ones(self) -> None:
        """grafana/generate.py --check: nobody edited the JSON by hand or forgot to regenerate."""
        proc = subprocess.run(
            [sys.executable, str(GRAFANA / "generate.py"), "--check"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout


class TestDashboards:
    def test_a_fleet_overview_and_one_per_service(self) -> None:
        """Six dashboards with distinct uids; panel ids are unique and panels fit the 24-column
        grid."""
        ds = dashboards()
        assert set(ds) == {"tori-fleet", "tori-mcp-gateway", *SERVICE_DASHBOARDS}
        for d in ds.values():
            ids = [p["id"] for p in d["panels"]]
            assert len(ids) == len(set(ids)), d["uid"]
            for p in d["panels"]:
                g = p["gridPos"]
                assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (d["uid"], p["title"])
                if p["type"] != "row":
                    assert p["targets"] and all(t["expr"] for t in p["targets"])

    def test_fleet_overview_shows_the_key_metrics_and_grpc_health(self) -> None:
        """The overview has every key metric of the guide, up, gRPC rate/errors/latency and the
        canary split."""
        text = " ".join(exprs(dashboards()["tori-fleet"]))
        for name in (*KEY_METRICS, "up{", "job:grpc_server_started:rate5m",
                     "job:grpc_server_error_ratio:rate5m", "p99_5m",
                     "route:gateway_tool_calls:share_percent"):  # fmt: skip
            assert name in text, name

    def test_each_service_dashboard_shows_its_metrics_tuning_signals_and_grpc(self) -> None:
        """A service's dashboard shows its key metrics and tuning signals, and its own gRPC rate,
        error ratio and latency (selected by its job)."""
        ds = dashboards()
        for uid, (job, names) in SERVICE_DASHBOARDS.items():
            text = " ".join(exprs(ds[uid]))
            for name in names:
                assert name in text, (uid, name)
            for grpc in ("grpc_server_started_total", "job:grpc_server_error_ratio:rate5m",
                         "job:grpc_server_handling_seconds:p99_5m"):  # fmt: skip
                assert f'{grpc}{{job="{job}"}}' in text, (uid, grpc)

    def test_gateway_dashboard_compares_the_routes(self) -> None:
        """The gateway's dashboard shows the canary setting, the real split, and error ratio and
        latency per route."""
        text = " ".join(exprs(dashboards()["tori-mcp-gateway"]))
        for name in ("gateway_canary_percent", "route:gateway_tool_calls:share_percent",
                     "route:gateway_tool_error_ratio:rate5m", "route:gateway_tool_seconds:p99_5m"):  # fmt: skip
            assert name in text, name

    def test_queries_read_only_series_that_exist(self) -> None:
        """Every series a panel reads is declared by the services' code, recorded by a rule, or
        built into Prometheus."""
        known = exported_names() | recorded() | BUILTIN
        for d in dashboards().values():
            for expr in exprs(d):
                unknown = series_names(expr) - known
                assert not unknown, (d["uid"], expr, unknown)

    def test_the_graph_panels_show_the_consolidated_graph(self) -> None:
        """The scheduler's dashboard has a Graph row with edges, prototypes, stability, version
        and the vault's unconsolidated backlog; the overview shows prototypes and stability."""
        d = dashboards()["tori-sleep-scheduler"]
        rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
        assert "Graph" in rows
        graph = " ".join(exprs(d))
        for name in ("sleep_graph_edges", "sleep_prototypes", "sleep_stability",
                     "sleep_graph_version", "sleep_vault_unconsolidated"):  # fmt: skip
            assert name in graph, name
        fleet = " ".join(exprs(dashboards()["tori-fleet"]))
        assert "sleep_prototypes" in fleet and "sleep_stability" in fleet

    def test_tuning_panels_draw_a_line_at_the_alert_level(self) -> None:
        """For each tuning alert, the panel showing what it reads has a threshold line (dashed)
        at the level in the alert's own expression, so the panel and the alert agree."""
        ds = dashboards()
        for alert, (uid, query) in ALERT_PANELS.items():
            (panel,) = [p for p in panels(ds[uid]) if any(t["expr"] == query for t in p["targets"])]
            defaults = panel["fieldConfig"]["defaults"]
            steps = [s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None]
            assert alert_level(alert) in steps, (alert, panel["title"], steps)
            assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed"), alert

    def test_the_level_reader_reads_each_kind_of_alert(self) -> None:
        """The check above reads the right number: 0.05 from a '<', 3 from a '>=' of a changes(),
        0.05 from the clamp_min floor of the quality alert."""
        assert alert_level("SleepEnergyDropLow") == 0.05
        assert alert_level("SleepEnergyDeltaOscillating") == 3
        assert alert_level("PrunerQualityDrop") == 0.05
        assert alert_level("KclModesGrowing") == 10
