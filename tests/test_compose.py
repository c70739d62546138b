"""docker-compose.yml and its override agree with the native fleet (checked statically: there is no
Docker engine on these machines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mcp_services.common.config import load_config
from mcp_services.fleet.cli import SERVICES, endpoint_of

ROOT = Path(__file__).resolve().parents[1]


def compose(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return data


class TestCompose:
    def test_every_fleet_service_is_in_compose_with_its_ports_and_health(self) -> None:
        """Each native service is a compose service running the same module, publishing the same
        gRPC and metrics ports, with a gRPC health check on its port."""
        settings = load_config(env="container", environ={})
        services = compose("docker-compose.yml")["services"]
        for svc in SERVICES:
            c = services[svc.name]
            assert c["command"] == [svc.module]
            target, metrics = endpoint_of(settings, svc)
            grpc_port = target.rsplit(":", 1)[1]
            metrics_port = metrics.rsplit(":", 1)[1].split("/")[0]
            assert f"{grpc_port}:{grpc_port}" in c["ports"]
            assert f"{metrics_port}:{metrics_port}" in c["ports"]
            assert c["healthcheck"]["test"][-1] == f"127.0.0.1:{grpc_port}"
            assert all(d["condition"] == "service_healthy" for d in c["depends_on"].values())

    def test_dependencies_follow_the_fleet_start_order(self) -> None:
        """A service only depends on services the native fleet starts before it."""
        services = compose("docker-compose.yml")["services"]
        order = ["redis"] + [s.name for s in SERVICES]
        for svc in SERVICES:
            for dep in services[svc.name]["depends_on"]:
                assert order.index(dep) < order.index(svc.name), (svc.name, dep)

    def test_override_knobs_validate_and_equal_the_defaults(self) -> None:
        """The override's tuning environment passes config validation and carries the guide's
        defaults, the same as the base config's."""
        override = compose("docker-compose.override.yml")
        env = override["services"]["sleep-scheduler"]["environment"]
        for name in SERVICES:
            assert override["services"][name.name]["environment"] == env
        tuned = load_config(env="container", environ={k: str(v) for k, v in env.items()})
        defaults = load_config(env="container", environ={})
        assert tuned.sleep_scheduler == defaults.sleep_scheduler
        assert tuned.sparse_pruner == defaults.sparse_pruner
        assert tuned.koopman_learner == defaults.koopman_learner
        assert tuned.grpc == defaults.grpc
        assert (tuned.sleep_scheduler.t0, tuned.sleep_scheduler.eta) == (2.0, 0.01)
        assert (tuned.sparse_pruner.tau, tuned.koopman_learner.rank) == (0.001, 50)

    def test_vault_cli_is_a_tool_profile(self) -> None:
        """vault-cli runs under the tools profile, so `docker compose run vault-cli ...` works
        without starting it with the fleet."""
        cli = compose("docker-compose.yml")["services"]["vault-cli"]
        assert cli["profiles"] == ["tools"]
        assert cli["entrypoint"][:3] == ["vault-cli", "--target", "episodic-vault:50051"]
