"""The deployment guide's quick start in the compose-shaped network, with service auth on.

One fleet (docker-compose.yml as the engine would run it, see harness.py) serves the module; the
quick-start steps run in order on it, as an operator would type them: `docker compose run
vault-cli put-get-loop 50`, a few `vault-cli put`, `docker compose exec sleep-scheduler python -m
mcp_services.sleep_scheduler.trigger --once`, the same for `prune --once`, memory.recall and the
learner's modes through the MCP gateway, then the health checks and a caller without the key.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mcp_services.koopman_learner.domain.synthetic import oscillator_system, simulate
from tests.compose_net.conftest import ROOT, Fleet

pytestmark = pytest.mark.fleet

GRPC = {
    "episodic-vault": ("episodic-vault:50051", "/tori.episodic.v1.EpisodicVault/GetStats"),
    "sleep-scheduler": ("sleep-scheduler:50052", "/tori.sleep.v1.SleepScheduler/GetGraphStats"),
    "sparse-pruner": ("sparse-pruner:50053", "/tori.pruner.v1.SparsePruner/GetPruningStats"),
    "koopman-learner": ("koopman-learner:50054", "/tori.koopman.v1.KoopmanLearner/GetKclStats"),
}
SERVICES = (*GRPC, "mcp-gateway")
GATEWAY_URL = "http://mcp-gateway:8765/mcp"
# Three assemblies of eight concepts, each seen four times with one member missing (a different
# one each time): what consolidation turns into attractors and pruning has edges of. Measured in
# process with the scheduler's and pruner's own code, beside put-get-loop's 50 random episodes
# (10 loop seeds): 84 edges, and both prunes (the one a consolidation triggers, then prune
# --once) commit. Random 15% drops or an unrelated concept per episode leave weaker graphs that
# the quality guard refuses to prune for some seeds.
ASSEMBLIES = {a: [f"concept:{a}:{i}" for i in range(8)] for a in ("fruit", "tool", "bird")}
COPIES = 4
TAG = "quick-start"
# The learner's data: traces of two damped oscillators (0.4 Hz and 1.1 Hz) over ten concepts.
OSC_IDS = [f"concept:osc:{i}" for i in range(10)]
OSC_HZ = (0.4, 1.1)
DT_S = 0.1


def probe(fleet: Fleet, *args: str, stdin: Any = None) -> Any:
    """Run the test's client (tests/compose_net/probe.py) from a namespace without any key."""
    argv = [sys.executable, "-m", "tests.compose_net.probe", *args]
    proc = fleet.net.client(argv, stdin=None if stdin is None else json.dumps(stdin))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def mcp(fleet: Fleet, *calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls in one MCP session through the gateway, with the gateway caller's key."""
    out: list[dict[str, Any]] = probe(
        fleet, "mcp", GATEWAY_URL, f"--key={fleet.gateway_key}",
        stdin=[{"tool": t, "arguments": a} for t, a in calls],
    )  # fmt: skip
    for (tool, _), result in zip(calls, out, strict=True):
        assert not result["isError"], f"{tool}: {result['text']}"
    return out


def episode_concepts(copy: int, assembly: int, members: list[str]) -> str:
    """`vault-cli put --concepts` of one noisy copy: one member missing, strengths 0.8-1.0."""
    missing = (3 * copy + assembly) % len(members)
    return ",".join(
        f"{c}={0.8 + 0.05 * ((i + copy) % 5):.2f}" for i, c in enumerate(members) if i != missing
    )


def trace_episodes() -> list[dict[str, Any]]:
    system = oscillator_system(len(OSC_IDS), list(OSC_HZ), [-0.05, -0.1], DT_S, seed=11)
    traces = simulate(system, n_traces=6, length=60, seed=0, offset=0.5, amplitudes=[0.1, 0.1])
    start_ms = int(time.time() * 1000) - 3_600_000
    return [
        {
            "id": f"osc-{k}",
            "timestamp": start_ms + 60_000 * k,
            "source": {"type": "sensor", "id": "quick-start"},
            "trace": [
                {
                    "offsetMs": round(t * DT_S * 1000),
                    "concepts": dict(zip(OSC_IDS, map(float, v), strict=True)),
                }
                for t, v in enumerate(values.T)
            ],
        }
        for k, values in enumerate(traces)
    ]


def unconsolidated(fleet: Fleet) -> list[dict[str, Any]]:
    """The vault's unconsolidated episodes (ListRecent over the network, with the key)."""
    listed = probe(
        fleet, "grpc", GRPC["episodic-vault"][0], "/tori.episodic.v1.EpisodicVault/ListRecent",
        f"--key={fleet.service_key}", '--request={"page_size": 1000}',
    )  # fmt: skip
    assert listed["code"] == "OK", listed
    episodes: list[dict[str, Any]] = listed["response"].get("episodes", [])
    return [e for e in episodes if not e.get("consolidated")]


def has_active_concept(episode: dict[str, Any]) -> bool:
    """Some concept above 0.5 (what counts as active), in the activation or any trace frame."""
    frames = [
        episode.get("activation", {}),
        *(f.get("activation", {}) for f in episode.get("trace", [])),
    ]
    return any(s > 0.5 for f in frames for s in f.get("strengths", []))


class TestQuickStart:
    """The steps run in this order on one fleet; a later step uses what an earlier one stored."""

    consolidated_version = 0

    def test_put_get_loop_from_its_own_namespace(self, fleet: Fleet) -> None:
        """`docker compose run vault-cli put-get-loop 50` writes and reads back 50 of 50 over
        episodic-vault:50051, authenticating with the mounted key file alone."""
        run = fleet.net.run("vault-cli", ["put-get-loop", "50"])
        assert run.returncode == 0, run.stdout + run.stderr
        assert "put-get-loop: 50/50 ok, 0 failed (0 mismatched)" in run.stdout, run.stdout

    def test_trigger_in_the_scheduler_consolidates_over_the_vaults_name(self, fleet: Fleet) -> None:
        """Episodes put with `vault-cli put`, then `trigger --once` exec'd in the scheduler's
        namespace: the scheduler reads every learnable episode from episodic-vault (nowhere else
        holds them), commits a graph with edges and leaves nothing unconsolidated: episodes with
        nothing active (a put-get-loop episode whose strengths are all <= 0.5) are marked too."""
        for copy in range(COPIES):
            for assembly, members in enumerate(ASSEMBLIES.values()):
                concepts = episode_concepts(copy, assembly, members)
                put = fleet.net.run("vault-cli", ["put", "--concepts", concepts, "--tags", TAG])
                assert put.returncode == 0, put.stdout + put.stderr
        learnable = {e["id"] for e in unconsolidated(fleet) if has_active_concept(e)}
        assert len(learnable) >= 40 + COPIES * len(ASSEMBLIES), len(learnable)
        trigger = fleet.net.exec(
            "sleep-scheduler", ["python", "-m", "mcp_services.sleep_scheduler.trigger", "--once"],
            timeout=300,
        )  # fmt: skip
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        job = json.loads(trigger.stdout)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        assert job["episodes_processed"] == len(learnable) and int(job["graph_version"]) >= 1, job
        assert unconsolidated(fleet) == []
        stats = probe(fleet, "grpc", *GRPC["sleep-scheduler"], f"--key={fleet.service_key}")
        assert int(stats["response"]["header"].get("edge_count", 0)) > 0, stats
        TestQuickStart.consolidated_version = int(job["graph_version"])

    def test_prune_once_commits(self, fleet: Fleet) -> None:
        """`prune --once` exec'd in the pruner's namespace reads the graph from sleep-scheduler
        and commits a new version (with a backup)."""
        argv = ["python", "-m", "mcp_services.sparse_pruner.prune", "--once"]
        for _ in range(5):
            prune = fleet.net.exec("sparse-pruner", argv, timeout=300)
            # The pruning that consolidation itself triggers may still run: retry, as a person would.
            if "RESOURCE_EXHAUSTED" not in prune.stderr:
                break
            time.sleep(1)
        assert prune.returncode == 0, prune.stdout + prune.stderr
        job = json.loads(prune.stdout)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        assert int(job["committed_version"]) > int(job["base_version"]) >= 1, job
        assert job["backup_id"] and int(job["edges_after"]) <= int(job["edges_before"]), job

    def test_recall_through_the_gateway_completes_the_cue(self, fleet: Fleet) -> None:
        """memory.recall through mcp-gateway reports completion APPLIED against the consolidated
        graph: gateway -> vault -> scheduler, every hop authenticated."""
        cue = {c: 1.0 for c in ASSEMBLIES["fruit"][:3]}
        args = {"concepts": cue, "k": 5, "tags": [TAG]}
        # Completion has a 250 ms deadline (vault.recall.completion_timeout_ms); the first recall
        # also opens the vault's channel to the scheduler, and a busy machine can miss it. That
        # is UNAVAILABLE (fail-soft), never DISABLED; completion must apply within a few tries.
        seen = []
        for _ in range(5):
            got = mcp(fleet, ("memory.recall", args))[0]["structured"]
            seen.append((got["completion"], got["completionDetail"]))
            if got["completion"] == "APPLIED":
                break
        assert got["completion"] == "APPLIED" and "DISABLED" not in dict(seen), seen
        assert got["graphVersion"] >= max(1, TestQuickStart.consolidated_version), got
        assert got["hits"] and set(cue) & set(got["hits"][0]["matchedConcepts"]), got

    def test_the_learner_reports_modes(self, fleet: Fleet) -> None:
        """Oscillator traces put through the gateway reach the learner (it follows
        episodic-vault), and memory.kcl_status reports a model with their frequencies."""
        put = mcp(fleet, ("memory.put", {"episodes": trace_episodes()}))[0]["structured"]
        assert put["created"] == 6, put
        status: dict[str, Any] = {}
        found: list[float] = []
        # The learner follows the vault on episode.stored events, polling every 5 s otherwise.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = mcp(fleet, ("memory.kcl_status", {"modes": 20}))[0]["structured"]
            found = [m["frequencyHz"] for m in status["modes"]]
            if all(any(abs(f - hz) < 0.02 for f in found) for hz in OSC_HZ):
                break
            time.sleep(1)
        assert status.get("modelReady") and status["modeCount"] > 0, status
        for hz in OSC_HZ:
            assert any(abs(f - hz) < 0.02 for f in found), (hz, found)

    @pytest.mark.parametrize("service", SERVICES)
    def test_health_check_script_and_compose_healthcheck_pass(
        self, fleet: Fleet, service: str
    ) -> None:
        """scripts/health-check.sh SERVICE passes inside the service's namespace with its
        environment, and so does the compose healthcheck command."""
        script = fleet.net.exec(service, [str(ROOT / "scripts" / "health-check.sh"), service])
        assert script.returncode == 0, script.stdout + script.stderr
        assert re.search(rf"^{re.escape(service)}\s+health\s+SERVING", script.stdout, re.M)
        compose = fleet.net.healthcheck(service)
        assert compose.returncode == 0, compose.stdout + compose.stderr

    def test_redis_passes_its_compose_healthcheck(self, fleet: Fleet) -> None:
        """`redis-cli ping` in the redis container answers, as compose probes it."""
        ping = fleet.net.healthcheck("redis")
        assert ping.returncode == 0 and "PONG" in ping.stdout, ping.stdout + ping.stderr

    @pytest.mark.parametrize("service", list(GRPC))
    def test_a_caller_without_the_key_is_refused(self, fleet: Fleet, service: str) -> None:
        """From a namespace without the secret, a call is UNAUTHENTICATED; the same call with
        the key from secrets/api_keys succeeds, so it is the key that decides."""
        target, method = GRPC[service]
        refused = probe(fleet, "grpc", target, method)
        assert refused["code"] == "UNAUTHENTICATED", refused
        allowed = probe(fleet, "grpc", target, method, f"--key={fleet.service_key}")
        assert allowed["code"] == "OK", allowed


class TestHarness:
    """The network runs what compose would run, where compose would run it."""

    def test_services_run_the_compose_command_and_environment(self, fleet: Fleet) -> None:
        """Each service process runs `python -m <compose command>` with the image's and the
        compose file's environment (override knobs merged in, the secret's path)."""
        for service in (*GRPC, "mcp-gateway"):
            pid = fleet.net.pid(service)
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
            assert argv[1:3] == [b"-m", fleet.net.topology.services[service].command[0].encode()]
            env = dict(
                kv.split("=", 1)
                for kv in Path(f"/proc/{pid}/environ").read_text().split("\0")
                if kv
            )
            assert (env["TORI_ENV"], env["REDIS_URL"]) == ("container", "redis://redis:6379/0")
            assert env["TORI_API_KEYS_FILE"] == "/run/secrets/api_keys"
            assert env["TORI_CONFIG_DIR"] == str(fleet.net.containers[service].workdir / "config")
            if service != "mcp-gateway":
                assert env["SLEEP_T0"] == "2.0"

    def test_names_resolve_inside_the_network_only(self, fleet: Fleet) -> None:
        """In the vault's namespace every compose name resolves to its address on the network;
        the host's own network has none of these addresses."""
        code = "import socket, sys; print(*[socket.gethostbyname(n) for n in sys.argv[1:]])"
        names = list(fleet.net.containers)
        got = fleet.net.exec("episodic-vault", ["python", "-c", code, *names])
        assert got.stdout.split() == [fleet.net.address(n) for n in names], got.stderr
        host = Path("/proc/net/fib_trie").read_text()
        assert not any(fleet.net.address(n) in host for n in names)

    @pytest.mark.parametrize("service", SERVICES)
    def test_each_published_port_listens_on_every_interface(
        self, fleet: Fleet, service: str
    ) -> None:
        """Every container port compose publishes has a LISTEN socket on the wildcard address
        (0.0.0.0 or ::) inside the service's namespace, so other containers and the host reach
        it."""
        ports = fleet.net.topology.services[service].ports
        tables = fleet.net.exec(service, ["cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout
        # /proc/net/tcp{,6} rows: "sl local_address(hex ip:hex port) rem_address st ..."; 0A is
        # LISTEN, an all-zero address the wildcard.
        listening = {
            int(port, 16)
            for addr, port, state in re.findall(
                r"^\s*\d+: (\w+):(\w{4}) \w+:\w{4} (\w\w) ", tables, re.M
            )
            if state == "0A" and set(addr) == {"0"}
        }
        assert ports and set(ports) <= listening, (ports, sorted(listening))

    def test_secrets_are_mounted_where_compose_mounts_them(self, fleet: Fleet) -> None:
        """Each container sees exactly its compose secrets under /run/secrets, read-only; the
        host's /run is untouched."""
        vault = fleet.net.exec("episodic-vault", ["ls", "/run/secrets"]).stdout.split()
        gateway = fleet.net.exec("mcp-gateway", ["ls", "/run/secrets"]).stdout.split()
        assert (vault, sorted(gateway)) == (["api_keys"], ["api_keys", "gateway_api_keys"])
        key = fleet.net.exec("episodic-vault", ["cat", "/run/secrets/api_keys"]).stdout
        assert key.strip() == f"{fleet.service_key} admin"  # `make secrets-up`: an admin key
        write = fleet.net.exec("episodic-vault", ["sh", "-c", "echo x >> /run/secrets/api_keys"])
        assert write.returncode != 0 and "Read-only" in write.stderr, write.stderr
        assert not Path("/run/secrets/api_keys").exists()

    def test_the_image_user_can_read_the_secrets_make_secrets_up_writes(self, fleet: Fleet) -> None:
        """The services run as the image's USER (tori, uid 10001), not as the host user who owns
        secrets/: every secret file `make secrets-up` wrote must be readable by that uid where
        compose mounts it (a 0600 file was not), while secrets/ itself stays closed on the host."""
        dockerfile = (ROOT / "Dockerfile").read_text()
        uid = re.search(r"^ARG UID=(\d+)$", dockerfile, re.M)
        assert uid is not None and re.search(r"^USER tori$", dockerfile, re.M)
        as_image_user = ["setpriv", f"--reuid={uid[1]}", f"--regid={uid[1]}", "--clear-groups"]
        for service, names in (("episodic-vault", ["api_keys"]),
                               ("mcp-gateway", ["api_keys", "gateway_api_keys"])):  # fmt: skip
            for name in names:
                got = fleet.net.exec(service, [*as_image_user, "cat", f"/run/secrets/{name}"])
                assert got.returncode == 0, (service, name, got.stderr)
                assert got.stdout.split()[0] in (fleet.service_key, fleet.gateway_key)
