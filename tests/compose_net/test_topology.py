"""The harness reads docker-compose.yml, its override and the Dockerfile as the engine does.

No namespaces here: these run anywhere. Where Debian's docker-compose is installed (scripts/test.sh
installs it) the reader is compared with its `config` output service by service.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose_net.conftest import ROOT
from tests.compose_net.topology import (
    Topology,
    TopologyError,
    duration_s,
    interpolate,
    parse_dockerfile,
)


class TestInterpolation:
    def test_defaults_apply_as_compose_applies_them(self) -> None:
        """`:-` covers unset and empty, `-` only unset, and `$$` is a literal dollar."""
        env = {"EMPTY": "", "SET": "v"}
        assert interpolate("${UNSET:-d} ${EMPTY:-d} ${SET:-d}", env, "x") == "d d v"
        assert interpolate("${UNSET-d}|${EMPTY-d}|$$SET|$SET", env, "x") == "d||$SET|v"

    def test_a_required_variable_that_is_missing_names_itself(self) -> None:
        """`${VAR:?message}` without VAR is an error naming the variable and the message."""
        with pytest.raises(TopologyError, match=r"KEY.*set the key"):
            interpolate("${KEY:?set the key}", {}, "services.x.environment.KEY")

    def test_durations(self) -> None:
        """5s, 1m30s and 500ms are seconds; a bare word is refused with the fix."""
        assert (duration_s("5s", "x"), duration_s("1m30s", "x"), duration_s("500ms", "x")) == (
            5.0,
            90.0,
            0.5,
        )
        with pytest.raises(TopologyError, match=r"write e\.g\. 5s"):
            duration_s("soon", "healthcheck.interval")


class TestTheProjectsFiles:
    def test_services_run_the_image_entrypoint_with_their_command(self) -> None:
        """A fleet service runs the Dockerfile's ENTRYPOINT (python -m) with its compose command,
        in the image's WORKDIR, with the image's ENV under the compose environment."""
        vault = Topology.load(ROOT, {}).services["episodic-vault"]
        assert vault.argv() == ["python", "-m", "mcp_services.episodic_vault.server"]
        assert vault.workdir == "/app"
        env = vault.environment
        assert (env["TORI_CONFIG_DIR"], env["TORI_VAR_DIR"], env["TORI_ENV"]) == (
            "/app/config",
            "/data",
            "container",
        )
        assert env["REDIS_URL"] == "redis://redis:6379/0" and env["SLEEP_T0"] == "2.0"
        assert [s.target for s in vault.secrets] == ["/run/secrets/api_keys"]
        assert vault.depends_on == {"redis": "service_healthy"} and vault.ports == (50051, 9091)
        assert vault.healthcheck is not None and vault.healthcheck.retries == 12

    def test_run_appends_its_arguments_to_the_tools_entrypoint(self) -> None:
        """`run vault-cli ARGS` is the tool's entrypoint + ARGS; TORI_API_KEY comes from the
        host's environment (empty when unset), the key file from the secret."""
        cli = Topology.load(ROOT, {"TORI_API_KEY": "k"}).services["vault-cli"]
        assert cli.argv(["put-get-loop", "50"]) == [
            "vault-cli", "--target", "episodic-vault:50051", "put-get-loop", "50",
        ]  # fmt: skip
        assert cli.profiles == ("tools",) and cli.environment["TORI_API_KEY"] == "k"
        assert Topology.load(ROOT, {}).services["vault-cli"].environment["TORI_API_KEY"] == ""

    def test_start_order_and_what_cannot_run(self) -> None:
        """Redis starts first and the gateway after the four services; Prometheus and Grafana
        are other images, left out with the reason; the tools are not started by `up`."""
        topo = Topology.load(ROOT, {})
        order = topo.start_order(topo.default_services())
        assert order[0] == "redis" and order.index("mcp-gateway") > order.index("koopman-learner")
        assert "vault-cli" not in order and "loadgen" not in order
        assert topo.services["prometheus"].runner == "skipped"
        assert "no container engine" in topo.services["grafana"].skip_reason
        assert topo.services["redis"].runner == "redis"

    def test_a_secret_directory_stands_in_for_secrets(self, tmp_path: Path) -> None:
        """With a stand-in directory, each secret's source is the same file name in it."""
        gw = Topology.load(ROOT, {}, secrets_dir=tmp_path).services["mcp-gateway"]
        assert {s.name: s.source for s in gw.secrets} == {
            "api_keys": tmp_path / "api_keys",
            "gateway_api_keys": tmp_path / "gateway_api_keys",
        }

    def test_agrees_with_docker_compose_config(self) -> None:
        """Every service's command, entrypoint, environment and dependencies are what Debian's
        docker-compose makes of the same two files."""
        exe = shutil.which("docker-compose")
        if exe is None:
            pytest.skip("docker-compose is not installed (scripts/test.sh installs it)")
        proc = subprocess.run(
            [exe, "-f", str(ROOT / "docker-compose.yml"), "-f",
             str(ROOT / "docker-compose.override.yml"), "--project-directory", str(ROOT),
             "--profile", "tools", "config"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir()},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        theirs: dict[str, Any] = yaml.safe_load(proc.stdout)["services"]
        ours = Topology.load(ROOT, {}).services
        assert set(theirs) == set(ours)
        for name, svc in ours.items():
            c = theirs[name]
            env = {k: str(v) for k, v in (c.get("environment") or {}).items()}
            image_env = {k: v for k, v in svc.environment.items() if k not in env}
            assert {k: v for k, v in svc.environment.items() if k in env} == env, name
            if svc.runner == "project":
                assert set(image_env) <= {"TORI_CONFIG_DIR", "TORI_VAR_DIR", "PYTHONUNBUFFERED",
                                          "PYTHONDONTWRITEBYTECODE"}, name  # fmt: skip
            assert list(svc.command) == list(c.get("command") or svc.command), name
            assert list(c.get("entrypoint") or svc.entrypoint) == list(svc.entrypoint), name
            deps = {d: v["condition"] for d, v in (c.get("depends_on") or {}).items()}
            assert deps == svc.depends_on, name


class TestMerging:
    def test_the_override_merges_and_replaces_as_compose_does(self, tmp_path: Path) -> None:
        """Override environment is merged key by key, ports are added, the command replaced;
        anchors and `<<:` keys resolve."""
        (tmp_path / "Dockerfile").write_text(
            'FROM x AS runtime\nENV A=1 \\\n    B="two words"\nENTRYPOINT ["tool"]\nCMD ["base"]\n'
        )
        (tmp_path / "docker-compose.yml").write_text(
            "x-env: &env\n  SHARED: s\nservices:\n  app:\n    build: {context: ., target: runtime}\n"
            "    environment:\n      <<: *env\n      ONLY: base\n      PORT: ${PORT:-80}\n"
            "    ports: ['80:80']\n    command: [one]\n"
        )
        (tmp_path / "docker-compose.override.yml").write_text(
            "services:\n  app:\n    environment: [ONLY=override, EXTRA=e]\n"
            "    ports: ['81:81']\n    command: [two, three]\n"
        )
        app = Topology.load(tmp_path, {"PORT": "8080"}).services["app"]
        assert app.environment == {
            "A": "1", "B": "two words", "SHARED": "s", "ONLY": "override", "PORT": "8080",
            "EXTRA": "e",
        }  # fmt: skip
        assert app.argv() == ["tool", "two", "three"]

    def test_entrypoint_in_compose_clears_the_image_cmd(self, tmp_path: Path) -> None:
        """A service entrypoint drops the image's CMD (Docker's rule); no command means none."""
        (tmp_path / "Dockerfile").write_text('FROM x\nENTRYPOINT ["a"]\nCMD ["b"]\n')
        (tmp_path / "docker-compose.yml").write_text(
            "services:\n  t:\n    build: .\n    entrypoint: [c, --flag]\n"
        )
        assert Topology.load(tmp_path, {}).services["t"].argv() == ["c", "--flag"]
        assert parse_dockerfile(tmp_path / "Dockerfile").cmd == ("b",)

    def test_a_dependency_cycle_is_named(self, tmp_path: Path) -> None:
        """depends_on a -> b -> a is refused with the cycle spelled out."""
        (tmp_path / "docker-compose.yml").write_text(
            "services:\n  a: {image: i, depends_on: [b]}\n  b: {image: i, depends_on: [a]}\n"
        )
        with pytest.raises(TopologyError, match="a -> b -> a"):
            Topology.load(tmp_path, {}).start_order(["a"])
