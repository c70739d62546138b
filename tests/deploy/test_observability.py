"""A real Prometheus (Debian's package) scrapes a running native fleet under load, with the
recording and alert rules of prometheus/, and every query of every provisioned dashboard panel
returns data.

The fleet is `make up` on private ports (mcp_services.loadgen.native); the load is tori-loadgen
with consolidation, pruning and learning triggers, plus MCP tool calls through the gateway from
several tenants so that both canary routes carry traffic. Prometheus runs prometheus/prometheus.yml
with only the targets and intervals changed for the private ports and a short test.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcp_services.loadgen.native import NativeFleet, free_ports

ROOT = Path(__file__).resolve().parents[2]
TENANTS = [f"tenant-{i}" for i in range(8)]
pytestmark = pytest.mark.fleet


def prometheus_config(fleet: NativeFleet, work: Path) -> Path:
    """prometheus/prometheus.yml with the private targets and 1 s intervals."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name in fleet.ports:
            job["static_configs"] = [{"targets": [fleet.metrics_target(name)]}]
    rules = work / "rules"
    shutil.copytree(ROOT / "prometheus" / "rules", rules)
    for path in rules.glob("*.yml"):  # the same rules, evaluated every second
        data = yaml.safe_load(path.read_text())
        for group in data["groups"]:
            group["interval"] = "1s"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Prometheus:
    def __init__(self, config: Path, data: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, (
            "prometheus is not installed: `apt-get install -y --no-install-recommends "
            "prometheus` (scripts/test.sh installs it when missing)"
        )
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str) -> list[Any]:
        result: list[Any] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def mcp_call(url: str, key: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One MCP tools/call over streamable HTTP (the gateway is stateless with JSON responses)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}  # fmt: skip
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {key}",
            "MCP-Protocol-Version": "2025-06-18",
        },
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


def key_of(tenant: str) -> str:
    return f"observability-key-{tenant}"


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        for panel in d["panels"]:
            for target in panel.get("targets", []):
                # Grafana's $__rate_interval is at least 4 scrape intervals: 1m covers it here.
                expr = target["expr"].replace("$__rate_interval", "1m")
                out.append((d["uid"], panel["title"], expr))
    return out


@pytest.fixture(scope="module")
def observed_fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Prometheus, NativeFleet]]:
    """A fleet that has run under load, and the Prometheus that watched it."""
    work = tmp_path_factory.mktemp("observability")
    keys = ",".join(f"{key_of(t)} {t}" for t in TENANTS)
    fleet = NativeFleet(
        work / "var",
        {"GATEWAY_API_KEYS": keys, "SLEEP_PRESSURE_THRESHOLD": "200"},
    )
    fleet.up()
    prom = Prometheus(prometheus_config(fleet, work), work / "tsdb")
    try:
        prom.wait_ready()
        load = subprocess.Popen(
            [sys.executable, "-m", "mcp_services.loadgen", "--rate", "60", "--duration", "20s",
             "--sleep-every", "6s", "--prune-every", "8s", "--learn-every", "3s",
             "--progress-every", "10s", "--seed", "11", *fleet.loadgen_args()],
            env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        gateway = f"http://127.0.0.1:{fleet.ports['mcp-gateway'][0]}/mcp"
        deadline = time.monotonic() + 30
        while load.poll() is None and time.monotonic() < deadline:
            for t in TENANTS:
                mcp_call(gateway, key_of(t), "memory.stats", {})
            time.sleep(1)
        out, err = load.communicate(timeout=240)
        summary = json.loads(out)
        assert summary["errors"] == 0 and summary["verify"]["lost"] == 0, (summary, err[-2000:])
        # Jobs the load started (a pruning run after a consolidation) may still be running: give
        # them a bounded while to finish and be scraped, then the tests judge what is there.
        # Light steady traffic to every gRPC service meanwhile: a rate needs two scrapes around
        # an increase, and a service busy compiling or solving during the load (the pruner's
        # first run compiles its kernels) may have missed its scrapes then.
        channels = [
            grpc.insecure_channel(f"127.0.0.1:{fleet.ports[name][0]}")
            for name in ("episodic-vault", "sleep-scheduler", "sparse-pruner", "koopman-learner")
            if name in fleet.ports
        ]
        deadline = time.monotonic() + 150
        try:
            while time.monotonic() < deadline and any(
                not prom.query(expr) for _, _, expr in panel_queries()
            ):
                for ch in channels:
                    with contextlib.suppress(grpc.RpcError):
                        health_pb2_grpc.HealthStub(ch).Check(
                            health_pb2.HealthCheckRequest(), timeout=2
                        )
                time.sleep(2)
        finally:
            for ch in channels:
                ch.close()
        yield prom, fleet
    finally:
        prom.stop()
        fleet.down()


@pytest.fixture
def observed(observed_fleet: tuple[Prometheus, NativeFleet]) -> Prometheus:
    return observed_fleet[0]


class TestObservability:
    def test_prometheus_scrapes_every_service(self, observed: Prometheus) -> None:
        """Every job of prometheus.yml that the fleet runs is up."""
        up = {r["metric"]["job"]: r["value"][1] for r in observed.query("up")}
        for job in ("episodic-vault", "sleep-scheduler", "sparse-pruner", "koopman-learner",
                    "mcp-gateway"):  # fmt: skip
            assert up.get(job) == "1", (job, up)

    def test_rules_load_and_evaluate(self, observed: Prometheus) -> None:
        """Prometheus loaded both rule files and evaluates every rule without error."""
        groups = observed.get("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) >= 25
        broken = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
        assert not broken, broken

    def test_every_dashboard_panel_query_returns_data(self, observed: Prometheus) -> None:
        """Each query of each panel of each provisioned dashboard returns at least one series
        from the fleet that just ran under load."""
        empty = [(uid, title, expr) for uid, title, expr in panel_queries()
                 if not observed.query(expr)]  # fmt: skip
        assert not empty, "panels without data:\n" + "\n".join(map(str, empty))

    def test_the_graph_panels_show_what_consolidation_made(self, observed: Prometheus) -> None:
        """The load's consolidations committed a graph version, and the graph panels read the
        scheduler's own series: one each for edges, prototypes, stability, version, backlog and
        whether the last cycle had something to learn (0 or 1)."""
        for name in ("sleep_graph_edges", "sleep_prototypes", "sleep_stability",
                     "sleep_graph_version", "sleep_vault_unconsolidated",
                     "sleep_cycle_learned"):  # fmt: skip
            result = observed.query(name)
            assert [r["metric"]["job"] for r in result] == ["sleep-scheduler"], (name, result)
        assert float(observed.query("sleep_graph_version")[0]["value"][1]) >= 1
        assert observed.query("sleep_cycle_learned")[0]["value"][1] in ("0", "1")

    def test_both_canary_routes_carry_traffic(self, observed: Prometheus) -> None:
        """With CANARY_PERCENT=50 and several tenants, the split panel shows both routes."""
        routes = {
            r["metric"]["route"] for r in observed.query("route:gateway_tool_calls:share_percent")
        }
        assert routes == {"primary", "canary"}


class TestHealthCheckScript:
    def test_each_running_service_is_healthy_and_a_dead_port_is_not(
        self, observed_fleet: tuple[Prometheus, NativeFleet]
    ) -> None:
        """scripts/health-check.sh <service> exits 0 for every service of the running fleet
        (health and metrics), and 1 naming the failure for an address where nothing listens."""
        _, fleet = observed_fleet
        script = str(ROOT / "scripts" / "health-check.sh")
        env = {**fleet.env, "PYTHON": sys.executable}
        for name in fleet.ports:
            proc = subprocess.run([script, name], env=env, capture_output=True, text=True,
                                  timeout=60)  # fmt: skip
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "SERVING" in proc.stdout and "metrics  ok" in proc.stdout
        (dead,) = free_ports(1)
        proc = subprocess.run([script, "sparse-pruner"], env={**env, "PRUNER_GRPC_PORT": str(dead)},
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 1 and "UNREACHABLE" in proc.stdout
        proc = subprocess.run([script, "nope"], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "one of" in proc.stderr
