"""docker-compose.yml, its override and the Dockerfile, checked without a Docker engine.

Two validators read the files the way an engine's client would: Debian's docker-compose (1.29,
`config`: interpolation, merging the override, its own schema) and the current compose-spec JSON
schema (check-jsonschema's vendored copy). The rest compares the merged result with the native
fleet (mcp_services.fleet): the same services, modules, ports and configuration variables.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mcp_services.common.config import load_config
from mcp_services.episodic_vault.adapters.completion import completion_address
from mcp_services.fleet.cli import SERVICES, endpoint_of

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.override.yml")
# Python services of the compose file that the native fleet does not run (its tools).
TOOLS = {"vault-cli", "loadgen"}
# The MCP gateway: HTTP rather than gRPC, its endpoint under `gateway` in the configuration.
GATEWAY = "mcp-gateway"
# Images that are not ours: the native fleet has a private redis-server; Prometheus and Grafana
# are run natively only by the observability test (tests/deploy).
THIRD_PARTY = {"redis", "prometheus", "grafana"}
# The gRPC services of the fleet (the gateway is HTTP and has its own checks).
GRPC_SERVICES = tuple(s for s in SERVICES if getattr(s, "kind", "grpc") == "grpc")
# Variables read by code rather than by config/*.yaml interpolation.
CODE_VARIABLES = {"TORI_ENV", "TORI_CONFIG_DIR", "TORI_API_KEY"}


def docker_compose() -> str:
    path = shutil.which("docker-compose")
    assert path, (
        "docker-compose is not installed; `apt-get install -y --no-install-recommends "
        "docker-compose` (scripts/test.sh does it)"
    )
    return path


def run_compose(*args: str, files: tuple[str, ...] = COMPOSE_FILES) -> str:
    argv = [docker_compose()]
    for f in files:
        argv += ["-f", str(ROOT / f)]
    proc = subprocess.run(
        [*argv, "--project-directory", str(ROOT), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir()},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@cache
def merged() -> dict[str, Any]:
    """The compose model after interpolation and merging the override, as docker-compose sees it."""
    data: dict[str, Any] = yaml.safe_load(run_compose("--profile", "tools", "config"))
    return data


def raw(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return data


def config_variables() -> set[str]:
    """Every ${VAR} the configuration files read."""
    found: set[str] = set()
    for path in (ROOT / "config").glob("*.yaml"):
        found |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text()))
    return found


def python_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in merged()["services"].items()
        if svc.get("image", "").startswith("tori-memory")
    }


def fleet_ports(name: str) -> tuple[int, int]:
    settings = load_config(env="local", environ={})
    svc = next(s for s in GRPC_SERVICES if s.name == name)
    target, metrics = endpoint_of(settings, svc)
    return int(target.rsplit(":", 1)[1]), int(metrics.rsplit(":", 1)[1].split("/")[0])


def published(svc: dict[str, Any]) -> set[tuple[int, int]]:
    """(host, container) port pairs; docker-compose 1.29 prints them as mappings or strings."""
    pairs = set()
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            pairs.add((int(p["published"]), int(p["target"])))
        else:
            host, container = str(p).split(":")[-2:]
            pairs.add((int(host), int(container)))
    return pairs


class TestValidation:
    def test_docker_compose_accepts_both_files_with_every_profile(self) -> None:
        """docker-compose's own `config` check passes on the file and its override merged."""
        names = set(run_compose("--profile", "tools", "config", "--services").split())
        assert {"redis", "prometheus", "grafana", "vault-cli", "loadgen"} <= names

    def test_docker_compose_rejects_a_broken_file(self) -> None:
        """The validator can fail: a misspelt depends_on condition is refused."""
        text = (ROOT / "docker-compose.yml").read_text().replace("service_healthy", "healthy", 1)
        bad = ROOT / "var" / "test-compose" / "docker-compose.yml"
        bad.parent.mkdir(parents=True, exist_ok=True)
        bad.write_text(text)
        proc = subprocess.run(
            [docker_compose(), "-f", str(bad), "--project-directory", str(ROOT), "config", "-q"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode != 0 and "condition" in proc.stderr

    def test_compose_spec_schema_accepts_both_files(self) -> None:
        """The current compose-spec JSON schema (what `docker compose` v2 validates against)."""
        proc = subprocess.run(
            [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
             *(str(ROOT / f) for f in COMPOSE_FILES)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr


class TestServices:
    def test_compose_runs_exactly_the_fleet_services_plus_tools(self) -> None:
        """Every native fleet service is a compose service running the same module, and every
        Python service of the compose file is either a fleet service or a tool."""
        services = python_services()
        fleet = {s.name: s for s in SERVICES}
        for name, svc in fleet.items():
            assert name in services, f"{name} runs in the native fleet but not in compose"
            assert services[name]["command"] == [svc.module]
        for name in services:
            assert name in fleet or name in TOOLS or name == GATEWAY, name

    def test_every_python_service_module_and_tool_exists(self) -> None:
        """The image can run what compose asks of it: each module imports, each tool is an entry
        point of the package."""
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        for name, svc in python_services().items():
            if name in TOOLS:
                assert svc["entrypoint"][0] in scripts, (name, svc["entrypoint"])
            else:
                assert module_exists(svc), (name, svc["command"])

    def test_ports_agree_with_the_native_fleet(self) -> None:
        """Each service publishes the gRPC and metrics ports the native fleet uses, unchanged."""
        services = python_services()
        for svc in GRPC_SERVICES:
            grpc_port, metrics_port = fleet_ports(svc.name)
            assert published(services[svc.name]) == {
                (grpc_port, grpc_port),
                (metrics_port, metrics_port),
            }, svc.name

    def test_the_gateway_publishes_its_configured_ports(self) -> None:
        """The gateway publishes MCP (8765) and metrics (9095) as its configuration has them, binds
        every interface in a container, and reads its callers' keys from /run/secrets."""
        local = load_config(env="local", environ={}).gateway
        gw = python_services()[GATEWAY]
        assert published(gw) == {(local.port, local.port), (local.metrics_port,) * 2}
        env = {k: str(v) for k, v in gw["environment"].items()}
        cfg = load_config(env="container", environ=env).gateway
        assert (cfg.host, cfg.metrics_host, cfg.port) == ("0.0.0.0", "0.0.0.0", local.port)
        assert cfg.api_keys_file.startswith("/run/secrets/")
        secret = Path(cfg.api_keys_file).name
        assert secret in merged()["secrets"]
        assert secret in {s["source"] if isinstance(s, dict) else s for s in gw["secrets"]}
        assert gw["healthcheck"]["test"] == [
            "CMD", "python", "-m", "mcp_services.gateway.health",
            f"http://127.0.0.1:{local.port}/healthz",
        ]  # fmt: skip
        assert gw["environment"]["CANARY_PERCENT"] == "0"

    def test_the_container_config_listens_on_those_ports_on_every_interface(self) -> None:
        """With the compose environment, each service's own config binds its published ports on
        0.0.0.0 (so other containers and the host reach it)."""
        for name, svc in python_services().items():
            if name in TOOLS:
                continue
            env = {k: str(v) for k, v in svc["environment"].items()}
            settings = load_config(env="container", environ=env)
            fleet = next((s for s in GRPC_SERVICES if s.name == name), None)
            if fleet is None:
                continue
            ep = getattr(settings.services, fleet.endpoint_key)
            assert (ep.host, ep.metrics_host) == ("0.0.0.0", "0.0.0.0")
            assert (ep.port, ep.metrics_port) == fleet_ports(name)

    def test_healthchecks_use_grpc_health_and_dependencies_wait_for_them(self) -> None:
        """Every gRPC service is probed by the standard health service on its own port; every
        dependency waits for service_healthy; dependencies follow the fleet's start order."""
        services = merged()["services"]
        order = ["redis"] + [s.name for s in SERVICES]
        for svc in GRPC_SERVICES:
            c = services[svc.name]
            grpc_port, _ = fleet_ports(svc.name)
            assert c["healthcheck"]["test"] == [
                "CMD", "python", "-m", "mcp_services.common.health", f"127.0.0.1:{grpc_port}"
            ]  # fmt: skip
            for dep in c["depends_on"]:
                assert order.index(dep) < order.index(svc.name), (svc.name, dep)
        for name, c in services.items():
            for dep, cond in c.get("depends_on", {}).items():
                assert cond["condition"] == "service_healthy", (name, dep)
                assert "healthcheck" in services[dep], f"{name} waits on {dep}, which has none"

    def test_every_service_keeps_its_data_on_its_own_volume(self) -> None:
        """Data survives a container's replacement: each stateful service mounts a named volume
        at its data directory, and no two share one."""
        services = merged()["services"]
        seen: dict[str, str] = {}
        for name, c in services.items():
            if name == "vault-cli":
                continue
            named = [src for src, _ in mounts(c) if not src.startswith("/")]
            assert named, f"{name} keeps its data in the container"
            for src in named:
                assert src not in seen, (name, seen.get(src))
                seen[src] = name


def mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume; docker-compose 1.29 prints "src:target:mode" strings."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            out.append((str(v["source"]), str(v["target"])))
        else:
            src, target = str(v).split(":")[:2]
            out.append((src, target))
    return out


def module_exists(svc: dict[str, Any]) -> bool:
    return importlib.util.find_spec(svc["command"][0]) is not None


class TestEnvironment:
    def test_every_variable_compose_sets_is_read_by_the_configuration(self) -> None:
        """A knob in the compose files does something: each variable a service gets is read by
        config/*.yaml (or by code, for TORI_ENV, TORI_CONFIG_DIR and the clients' TORI_API_KEY)."""
        known = config_variables() | CODE_VARIABLES
        for name, svc in python_services().items():
            unknown = set(svc["environment"]) - known
            assert not unknown, f"{name}: {sorted(unknown)} are read by nothing"

    def test_override_knobs_validate_and_equal_the_guides_defaults(self) -> None:
        """The override's tuning environment passes config validation and carries the guide's
        defaults (T0 2.0, eta 0.01, tau 0.001, rank 50), the same as the base config's."""
        override = raw("docker-compose.override.yml")["services"]
        env = {k: str(v) for k, v in override["sleep-scheduler"]["environment"].items()}
        for svc in GRPC_SERVICES:
            assert override[svc.name]["environment"] == override["sleep-scheduler"]["environment"]
        needed = {"SLEEP_T0", "SLEEP_ETA", "PRUNE_TAU", "PRUNE_L1_THRESHOLD", "KCL_RANK",
                  "KCL_L1_STRENGTH", "GRPC_MAX_CONNECTION_AGE_MS"}  # fmt: skip
        assert needed <= set(env)
        tuned = load_config(env="container", environ=env)
        defaults = load_config(env="container", environ={})
        for section in ("sleep_scheduler", "sparse_pruner", "koopman_learner", "grpc"):
            assert getattr(tuned, section) == getattr(defaults, section), section
        assert (tuned.sleep_scheduler.t0, tuned.sleep_scheduler.eta) == (2.0, 0.01)
        assert (tuned.sparse_pruner.tau, tuned.koopman_learner.rank) == (0.001, 50)
        assert tuned.grpc.max_connection_age_ms == 300_000

    def test_override_knobs_reach_every_service_after_merging(self) -> None:
        """docker-compose merges the override's knobs into each service's base environment."""
        services = merged()["services"]
        for svc in GRPC_SERVICES:
            env = services[svc.name]["environment"]
            assert env["SLEEP_T0"] == "2.0" and env["REDIS_URL"] == "redis://redis:6379/0"

    def test_services_get_what_the_native_fleet_gives_them(self) -> None:
        """The fleet hands each process REDIS_URL and TORI_VAR_DIR; compose sets the first (to its
        Redis) and the image the second (to the /data volume)."""
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert re.search(r"TORI_VAR_DIR=/data\b", dockerfile)
        for svc in SERVICES:
            env = merged()["services"][svc.name]["environment"]
            assert env["REDIS_URL"].startswith("redis://redis:")
            assert env["TORI_ENV"] == "container"

    def test_the_vault_completes_recall_through_the_compose_scheduler(self) -> None:
        """Recall completion is on in compose: nothing turns it off for the vault, and the address
        its configuration resolves is the scheduler's compose name and the port it listens on."""
        services = merged()["services"]
        env = {k: str(v) for k, v in services["episodic-vault"]["environment"].items()}
        assert env.get("VAULT_RECALL_SCHEDULER_ADDRESS", "").strip().lower() != "off"
        address = completion_address(load_config(env="container", environ=env))
        host, _, port = address.rpartition(":")
        assert host == "sleep-scheduler" and host in services, address
        scheduler_env = {k: str(v) for k, v in services[host]["environment"].items()}
        listens = load_config(env="container", environ=scheduler_env).services.sleep_scheduler
        assert int(port) == listens.port == fleet_ports(host)[0]

    def test_secrets_are_files_under_run_secrets(self) -> None:
        """API keys come from a compose secret, mounted at /run/secrets/api_keys and named by
        TORI_API_KEYS_FILE; no key is written into the compose files."""
        model = merged()
        assert "api_keys" in model["secrets"]
        for name, svc in python_services().items():
            targets = {s["source"] if isinstance(s, dict) else s for s in svc.get("secrets", [])}
            assert "api_keys" in targets, name
            assert svc["environment"]["TORI_API_KEYS_FILE"] == "/run/secrets/api_keys"
        text = "".join((ROOT / f).read_text() for f in COMPOSE_FILES)
        assert "TORI_API_KEYS:" not in text


class TestObservabilityAndTools:
    def test_prometheus_and_grafana_on_their_ports_with_provisioning(self) -> None:
        """Prometheus on 9090 with prometheus/ mounted; Grafana on 3000, admin / tori-memory,
        sign-up off, provisioning and dashboards from grafana/."""
        services = merged()["services"]
        prom, graf = services["prometheus"], services["grafana"]
        assert published(prom) == {(9090, 9090)} and published(graf) == {(3000, 3000)}
        assert (str(ROOT / "prometheus"), "/etc/prometheus") in mounts(prom)
        env = graf["environment"]
        assert (env["GF_SECURITY_ADMIN_USER"], env["GF_SECURITY_ADMIN_PASSWORD"]) == (
            "admin",
            "tori-memory",
        )
        assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
        assert (str(ROOT / "grafana" / "provisioning"), "/etc/grafana/provisioning") in mounts(graf)
        assert (ROOT / "grafana" / "provisioning").is_dir()

    def test_tools_run_only_on_demand(self) -> None:
        """vault-cli and loadgen sit under the tools profile, so `docker compose run vault-cli
        put-get-loop 50` works without starting them with the fleet."""
        services = raw("docker-compose.yml")["services"]
        for tool in TOOLS:
            assert services[tool]["profiles"] == ["tools"]
            assert services[tool]["restart"] == "no"
        assert services["vault-cli"]["entrypoint"] == ["vault-cli", "--target",
                                                       "episodic-vault:50051"]  # fmt: skip


class TestDockerfile:
    def stages(self) -> list[list[tuple[str, str]]]:
        text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
        out: list[list[tuple[str, str]]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            instr, _, rest = line.partition(" ")
            if instr.upper() == "FROM":
                out.append([])
            out[-1].append((instr.upper(), rest.strip()))
        return out

    def test_multi_stage_non_root_exec_form(self) -> None:
        """Two stages (the runtime copies wheels from the build stage), a non-root USER, and an
        exec-form (JSON) ENTRYPOINT so the service is PID 1 and receives SIGTERM."""
        stages = self.stages()
        assert len(stages) >= 2
        runtime = stages[-1]
        assert runtime[0] == ("FROM", "python:3.11-slim AS runtime")
        assert any(i == "COPY" and r.startswith("--from=build") for i, r in runtime)
        user = [r for i, r in runtime if i == "USER"]
        assert user and user[-1] not in ("root", "0")
        entry = [r for i, r in runtime if i == "ENTRYPOINT"]
        assert json.loads(entry[-1]) == ["python", "-m"]
        for i, r in runtime:
            if i == "CMD":
                assert module_exists({"command": json.loads(r)})

    def test_what_the_build_copies_exists(self) -> None:
        """Every COPY source from the build context is in the repository."""
        for stage in self.stages():
            for instr, rest in stage:
                if instr == "COPY" and not rest.startswith("--from"):
                    for src in rest.split()[:-1]:
                        assert (ROOT / src).exists(), src
